"""Runs of a dataflow session racing plan swaps: what the tests of atomic plan swaps share."""

import threading


def run_while_swapping(session, feeds, swap) -> tuple[dict, list]:
    """Run ``feeds`` on two threads while a third calls ``swap(index)`` (index 0, 1, 2, ...) until they
    finish; returns each feed's first output by index and the errors the runs raised."""
    stop, results, errors = threading.Event(), {}, []

    def toggle():
        index = 0
        while not stop.is_set():
            swap(index)
            index += 1

    def worker(offset):
        try:
            for i in range(offset, len(feeds), 2):
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
