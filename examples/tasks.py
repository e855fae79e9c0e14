"""Functions for the python executor: colonies executor start python --module examples/tasks.py"""


def add(a: float, b: float) -> float:
    print(f"adding {a} and {b}")
    return a + b


def fibonacci(n: int) -> list[int]:
    seq = [0, 1]
    while len(seq) < n:
        seq.append(seq[-1] + seq[-2])
    return seq[:n]
