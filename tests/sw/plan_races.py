"""Runs of a dataflow session racing plan swaps: what the tests of atomic plan swaps share."""

import threading

#: How long a run waits for the swapping thread to finish its next swap before the race is called off.
SWAP_WAIT_SECONDS = 60.0


def run_while_swapping(session, feeds, swap) -> tuple[dict, list]:
    """Run ``feeds`` on two threads while a third calls ``swap(index)`` (index 0, 1, 2, ...) until they
    finish; returns each feed's first output by index and the errors the runs raised.

    The swaps never stop while runs go on, but a run starts only after at least one swap has completed
    since the previous run started: otherwise fast runs can all finish before a slow swap lands, and a
    test that some runs saw different plans fails by timing alone.
    """
    stop, results, errors = threading.Event(), {}, []
    swapped = threading.Condition()
    completed = [0]                   # swaps finished so far

    def toggle():
        index = 0
        while not stop.is_set():
            swap(index)
            index += 1
            with swapped:
                completed[0] += 1
                swapped.notify_all()

    seen = [0]                        # swaps finished when the latest run started

    def next_run_may_start():
        with swapped:
            if not swapped.wait_for(lambda: completed[0] > seen[0], timeout=SWAP_WAIT_SECONDS):
                raise TimeoutError(f"no plan swap completed within {SWAP_WAIT_SECONDS} s")
            seen[0] = completed[0]

    def worker(offset):
        try:
            for i in range(offset, len(feeds), 2):
                next_run_may_start()
                results[i] = session.run(None, feeds[i])[0]
        except Exception as err:          # surfaced by the caller
            errors.append(err)

    toggler = threading.Thread(target=toggle)
    toggler.start()
    workers = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    stop.set()
    toggler.join()
    return results, errors
