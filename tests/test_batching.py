"""Reader processes: same results as reading in process, in input order; one reader for a small study."""

from __future__ import annotations

import multiprocessing
import os

import torch

from operators.input.batching import DecodeOptions, iter_prepared
from operators.input.preprocessing import Preprocessing

PRE = Preprocessing(size=64)


def test_reader_pool_gives_what_one_process_gives_in_input_order(corpus):
    serial = list(iter_prepared(corpus, PRE, workers=0))
    it = iter_prepared(corpus, PRE, workers=2)
    first = next(it)
    assert len(multiprocessing.active_children()) == 2  # a pool runs for a folder this size
    pooled = [first, *it]
    assert [i.source for i, _ in pooled] == [i.source for i, _ in serial]
    for (_, a), (_, b) in zip(serial, pooled):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)


def test_a_pool_never_has_more_readers_than_files(corpus, tmp_path):
    """A one-study run starts one reader (it still contains decoder crashes), not one per core."""
    names = ["wg04_RG3_J2KI.dcm"]
    for n in names:
        os.symlink(corpus / n, tmp_path / n)
    it = iter_prepared(tmp_path, PRE, workers=4, decode=DecodeOptions(follow_links=True))
    first = next(it)
    assert len(multiprocessing.active_children()) == 1
    assert [first[0].source, *(i.source for i, _ in it)] == sorted(names)
    assert multiprocessing.active_children() == []  # readers stop with the last input


def test_workers_inherit_the_input_stage_from_the_forkserver():
    """Readers and SR workers fork from a server that imported the input stage once."""
    from concurrent.futures import ProcessPoolExecutor

    from operators.input.processes import loaded_modules, start_early, worker_context

    start_early()
    with ProcessPoolExecutor(max_workers=1, mp_context=worker_context()) as pool:
        inherited = pool.submit(loaded_modules).result()
    # unpickling the probe imports operators.input.processes alone; the rest came with the fork
    assert "operators.input.batching" in inherited and "operators.input.radiograph" in inherited
