"""Long loops show progress: without a terminal (a log file, a batch job), steady lines on stderr that say how
far the work is and how long it has left; nothing when progress is turned off."""

from __future__ import annotations

from dataonomy.progress import progress


def test_a_log_gets_steady_lines_with_the_time_left(capsys):
    batches = [[1, 2, 3], [4, 5, 6], [7, 8]]
    seen = list(progress(batches, desc="scoring", weights=[len(b) for b in batches], log_every=0.0))
    assert seen == batches
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("scoring: 3/8 images,") and "s left" in lines[0]
    assert lines[2].startswith("scoring: 8/8 images,")
    assert lines[-1].startswith("scoring: 8 images in ")


def test_an_iterator_without_a_length_is_not_read_ahead(capsys):
    pulled = []

    def items():
        for i in range(3):
            pulled.append(i)
            yield i

    for i in progress(items(), desc="map cells", log_every=0.0):
        assert pulled == list(range(i + 1))  # one at a time, not listed first
    assert "map cells: 1 images" in capsys.readouterr().err


def test_progress_off_prints_nothing(capsys):
    assert list(progress(range(5), desc="x", enabled=False, log_every=0.0)) == list(range(5))
    assert capsys.readouterr().err == ""


def test_a_resumed_count_starts_where_the_work_stood(capsys):
    from dataonomy.progress import Counter

    counter = Counter(10, "features", initial=4, log_every=0.0)
    counter.update(3)
    counter.update(3)
    counter.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("features: 7/10 images,") and lines[1].startswith("features: 10/10 images,")
    assert lines[-1].startswith("features: 6 images in ")  # the work of this run, not the resumed part
