"""Which running trials still have a campaign process behind them, and one proposal at a time
(tasks/liveness.py), on a real Optuna SQLite study."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import optuna
import pytest

from tasks import liveness


@pytest.fixture
def study(tmp_path):
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def frozen(study, trial):
    return study.get_trials(deepcopy=False)[trial.number]


def test_a_trial_of_a_running_campaign_is_alive_and_abandoned_once_its_run_ends(study):
    with liveness.Heartbeat(study) as run:
        trial = study.ask()
        run.claim(trial)
        assert not liveness.abandoned(frozen(study, trial))
    assert liveness.abandoned(frozen(study, trial))  # the run ended without telling it: a crash


def test_a_trial_whose_process_died_is_abandoned_at_once(study):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = study.ask()
    mark = liveness.owner_mark("run").split("|")
    mark[2], mark[3] = str(dead.pid), "1"  # a process of this machine that has gone
    trial.set_user_attr(liveness.OWNER, "|".join(mark))
    trial.set_user_attr(liveness.BEAT, time.time())
    assert liveness.abandoned(frozen(study, trial))


def test_a_trial_of_another_machine_lives_as_long_as_its_heartbeat(study):
    trial = study.ask()
    host = socket.gethostname() + "-elsewhere"
    trial.set_user_attr(liveness.OWNER, f"{host}|boot|4242|99|run")
    beat = time.time()
    trial.set_user_attr(liveness.BEAT, beat)
    assert not liveness.abandoned(frozen(study, trial), now=beat + liveness.GRACE_S - 1)
    assert liveness.abandoned(frozen(study, trial), now=beat + liveness.GRACE_S + 1)


def test_a_trial_nobody_claimed_is_abandoned_after_a_short_grace(study):
    trial = study.ask()
    started = frozen(study, trial).datetime_start.timestamp()
    assert liveness.unclaimed(frozen(study, trial))
    assert not liveness.abandoned(frozen(study, trial), now=started + 1)
    assert liveness.abandoned(frozen(study, trial), now=started + liveness.UNCLAIMED_S + 1)


def test_the_heartbeat_is_written_while_the_trial_runs(study):
    with liveness.Heartbeat(study, interval_s=0.1) as run:
        trial = study.ask()
        run.claim(trial)
        first = frozen(study, trial).user_attrs[liveness.BEAT]
        time.sleep(0.5)
        assert frozen(study, trial).user_attrs[liveness.BEAT] > first


def test_proposals_of_one_campaign_take_turns(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    order = []

    def propose(name: str, hold_s: float) -> None:
        with liveness.proposal_lock(url, "c"):
            order.append(f"{name} in")
            time.sleep(hold_s)
            order.append(f"{name} out")

    first = threading.Thread(target=propose, args=("first", 0.5))
    first.start()
    time.sleep(0.1)
    propose("second", 0.0)
    first.join()
    assert order == ["first in", "first out", "second in", "second out"]
