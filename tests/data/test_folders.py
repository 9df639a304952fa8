"""DataLoader workers of the training and evaluation loaders."""


def test_a_worker_is_quiet_about_a_main_process_that_is_gone(monkeypatch):
    """A worker's handle-sharing thread reports errors through sys.excepthook; a vanished peer is not one."""
    import sys

    from facetrain.data import quiet_worker

    reported = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, value, trace: reported.append(kind))
    quiet_worker(0)
    for error in (EOFError(), ConnectionResetError(), BrokenPipeError(), ValueError("a real bug")):
        try:
            raise error
        except BaseException:
            sys.excepthook(*sys.exc_info())
    assert reported == [ValueError]
