"""The training loop of both refurbish modes: budget, periodic saves, Ctrl-C."""
import io
import os
import signal

from d2f.refurbish.loop import DEFAULT_STEPS, run_training


def _run(steps, minutes, save_every, interrupt_at=None, raise_at=None):
    done, saved = [], []  # done: steps that ran to their end

    def step():
        if len(done) + 1 == interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, arriving mid-step
        if len(done) + 1 == raise_at:
            raise KeyboardInterrupt
        done.append(1)
        return 1.0, 10

    code = run_training(step, lambda: saved.append(len(done)), lambda: len(done), steps, minutes, save_every,
                        io.StringIO())
    return code, len(done), saved


def test_ctrl_c_lets_the_step_finish_then_saves_it():
    before = signal.getsignal(signal.SIGINT)
    assert _run(50, None, 0, interrupt_at=3) == (130, 3, [3])
    assert signal.getsignal(signal.SIGINT) is before


def test_keyboard_interrupt_raised_inside_a_step_still_saves():
    assert _run(50, None, 0, raise_at=2) == (130, 1, [1])  # that step is lost, the one before saved


def test_saves_every_n_steps_and_at_the_end():
    assert _run(10, None, 4) == (0, 10, [4, 8, 10])


def test_no_budget_is_a_short_run_not_an_endless_one():
    code, done, saved = _run(None, None, 40)
    assert (code, done) == (0, DEFAULT_STEPS) and saved == [40, 80, DEFAULT_STEPS]


def test_status_line_shows_step_loss_speed_and_eta():
    stream = io.StringIO()
    code = run_training(lambda: (0.5, 100), lambda: None, lambda: 0, 3, None, 0, stream)
    assert code == 0
    line = stream.getvalue().replace("\r", "\n").strip().splitlines()[-1]
    assert "3/3" in line and "loss 0.5000" in line and "tok/s" in line and "eta 0:00:00" in line


def test_time_bounded_status_counts_steps_without_a_total():
    from d2f.refurbish.progress import Progress

    progress = Progress(None, 60.0, io.StringIO())
    line = progress.update(1, 2.0, 10)
    progress.close()
    assert line.startswith("step 1") and "loss 2.0000" in line and "eta 0:00:5" in line
