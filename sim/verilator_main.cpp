// The main loop of Braze's co-simulation executables: cocotb's Verilator main
// (cocotb/share/lib/verilator/verilator.cpp, BSD-3-Clause) with two changes.
//
// 1. The clock is generated here.  cocotb's clock toggles the top's `clk` through a VPI timed
//    callback every half period, which costs as much as evaluating the design; here a clock edge
//    is a time slot of the main loop, and the host's Python code runs only for the triggers it
//    awaits (an interrupt, a timer, a register access finishing).  A time slot in which nothing
//    but the clock happens -- no timer due, no read-write or read-only callback waiting, no
//    value-change callback firing -- is just an evaluation of the design; any other slot runs the
//    whole of cocotb's sequence.  The half period, in simulation time units, is BRAZE_HALF_PERIOD
//    (defined by the build).
// 2. It is linked with verilator_storage.cpp, whose `braze_storage` gives the hosted Python code
//    the external memory's bytes, so that bulk transfers are one memcpy instead of a VPI call per
//    word.

#include <libgen.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <memory>
#include <string>

#include "Vtop.h"
#include "verilated.h"
#include "verilated_vpi.h"

#ifndef VM_TRACE_FST
#define VM_TRACE_FST 0
#endif

#if VM_TRACE
#if VM_TRACE_FST
#include <verilated_fst_c.h>
using verilated_trace_t = VerilatedFstC;
#else
#include <verilated_vcd_c.h>
using verilated_trace_t = VerilatedVcdC;
#endif
static verilated_trace_t *tfp;
#endif

#ifndef BRAZE_HALF_PERIOD
#error "BRAZE_HALF_PERIOD (half the clock period in time units) must be defined"
#endif

static vluint64_t main_time = 0;

double sc_time_stamp() { return main_time; }

extern "C" void vlog_startup_routines_bootstrap(void);

static inline bool settle_value_callbacks() {
    bool cbs_called, again;
    cbs_called = again = VerilatedVpi::callValueCbs();
    while (again) again = VerilatedVpi::callValueCbs();
    return cbs_called;
}

static void wrap_up() {
    VerilatedVpi::callCbs(cbEndOfSimulation);
#if VM_TRACE
    if (tfp) tfp->close();
#endif
}

// The start of a time slot as cocotb's main runs it: next-time-step and timed callbacks.
static void start_slot() {
    VerilatedVpi::callCbs(cbNextSimTime);
    settle_value_callbacks();
    VerilatedVpi::callTimedCbs();
    settle_value_callbacks();
}

// The rest of a time slot as cocotb's main runs it: evaluate until no callback asks for more, then
// the read-write and read-only callbacks.  With `evaluated`, the slot's first eval_step is done and
// value-change callbacks have started to run after it.
static void finish_slot(Vtop *top, bool evaluated) {
    do {
        do {
            if (evaluated) {
                evaluated = false;
            } else {
                top->eval_step();
                VerilatedVpi::clearEvalNeeded();
                VerilatedVpi::doInertialPuts();
            }
            settle_value_callbacks();
        } while (VerilatedVpi::evalNeeded());
        VerilatedVpi::callCbs(cbReadWriteSynch);
        VerilatedVpi::doInertialPuts();
        settle_value_callbacks();
    } while (VerilatedVpi::evalNeeded());
    top->eval_end_step();
    VerilatedVpi::callCbs(cbReadOnlySynch);
#if VM_TRACE
    if (tfp) tfp->dump(main_time);
#endif
}

int main(int argc, char **argv) {
#if VM_TRACE_FST
    const char *traceFile = "dump.fst";
#else
    const char *traceFile = "dump.vcd";
#endif
    bool traceOn = false;
    for (int i = 1; i < argc; i++) {
        std::string arg = std::string(argv[i]);
        if (arg == "--trace") {
#if VM_TRACE
            traceOn = true;
#else
            fprintf(stderr, "Error: --trace requires the design to be built with trace support\n");
            return -1;
#endif
        } else if (arg == "--trace-file") {
            if (++i < argc) {
                traceFile = argv[i];
            } else {
                fprintf(stderr, "Error: --trace-file requires a parameter\n");
                return -1;
            }
        }
    }

    Verilated::commandArgs(argc, argv);
    std::unique_ptr<Vtop> top(new Vtop(""));
    Verilated::fatalOnVpiError(false);  // otherwise it will fail on systemtf

#if VM_TRACE
    Verilated::traceEverOn(true);
    if (traceOn) {
        tfp = new verilated_trace_t;
        top->trace(tfp, 99);
        tfp->open(traceFile);
    }
#endif

    top->clk = 0;
    vluint64_t next_edge = BRAZE_HALF_PERIOD;

    vlog_startup_routines_bootstrap();
    Verilated::addExitCb([](void *) { wrap_up(); }, nullptr);
    VerilatedVpi::callCbs(cbStartOfSimulation);
    settle_value_callbacks();
    finish_slot(top.get(), false);

    while (!Verilated::gotFinish()) {
        // The next time slot: the next clock edge, unless a cocotb timer or the design's own
        // timing comes first.
        vluint64_t next_time = next_edge;
        const vluint64_t next_time_cocotb = VerilatedVpi::cbNextDeadline();
        if (next_time_cocotb < next_time) next_time = next_time_cocotb;
        if (top->eventsPending() && top->nextTimeSlot() < next_time) next_time = top->nextTimeSlot();
        main_time = next_time;
        const bool edge = main_time == next_edge;
        if (edge) {
            top->clk = !top->clk;
            next_edge += BRAZE_HALF_PERIOD;
        }
        // Fast path: a clock edge and nothing else (short-circuit order matters: the callbacks
        // run only when the cheap checks pass, and the full path runs them again harmlessly).
        if (edge && next_time_cocotb > main_time && !top->eventsPending()
            && !VerilatedVpi::hasCbs(cbReadWriteSynch) && !VerilatedVpi::hasCbs(cbReadOnlySynch)
            && !VerilatedVpi::callCbs(cbNextSimTime) && !VerilatedVpi::callValueCbs()) {
            top->eval_step();
            if (VerilatedVpi::callValueCbs()) {
                finish_slot(top.get(), true);
            } else {
                top->eval_end_step();
#if VM_TRACE
                if (tfp) tfp->dump(main_time);
#endif
            }
            continue;
        }
        start_slot();
        finish_slot(top.get(), false);
    }

    top->final();
    wrap_up();
#if VM_TRACE
    if (tfp) {
        delete tfp;
        tfp = nullptr;
    }
#endif
    return Verilated::threadContextp()->errorCount() > 0 ? 1 : 0;
}
