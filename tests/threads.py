"""Running a computation under several thread counts, for tests that compare the results."""
import fastconv


def results_on_threads(compute, counts=(1, 2)):
    """[compute() for each thread count], the process's count restored afterwards."""
    previous = fastconv.get_num_threads()
    try:
        results = []
        for threads in counts:
            fastconv.set_num_threads(threads)
            results.append(compute())
        return results
    finally:
        fastconv.set_num_threads(previous)
