"""The Braze compiler (:mod:`braze.sw.compiler`) and runtime (:mod:`braze.sw.runtime`)."""
