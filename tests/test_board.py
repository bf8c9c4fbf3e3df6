"""`ganlab board`: TensorBoard on a finished tiny run, for real: its scalars and images fetched over HTTP from
TensorBoard's plugins (127.0.0.1 only), the page rendered by a headless Chromium (Debian's package) with the
run's tag names in it and a screenshot taken, and a clean stop on Ctrl-C."""

import io
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image

from conftest import dataset_overrides, offline_env, read_events, run_cli

CHROMIUM = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
# as the machines' notes say: headless, no sandbox (root), nothing that would reach the closed network
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--window-size=1400,1000"]


# A direct opener of its own: urlopen's global opener freezes the proxies of whatever environment it was first
# built in, and an in-process CLI run of an earlier test on this worker (tests' offline_env: a dead proxy) can
# be that environment, after which every request to 127.0.0.1 went to the dead proxy (CI, 2026-12-04).
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, timeout: float = 10.0) -> bytes:
    with _DIRECT.open(url, timeout=timeout) as r:
        return r.read()


def _poll_json(url: str, ready, timeout: float = 180.0):  # generous: a loaded CI machine starts TensorBoard slowly
    t0, last = time.monotonic(), None
    while time.monotonic() - t0 < timeout:
        try:
            last = json.loads(_get(url))
            if ready(last):
                return last
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} never became ready: {last}")


@pytest.fixture(scope="module")
def board(data_root, tmp_path_factory):
    """A finished tiny dcgan run, and `ganlab board` serving it."""
    tmp = tmp_path_factory.mktemp("board")
    run = tmp / "run"
    r = run_cli("train", "model=dcgan", "dataset=mnist", *dataset_overrides("mnist", data_root), "device=cpu",
                "model.width=8", "train.batch_size=16", "train.steps=20", "train.log_every=5", "train.sample_every=10",
                "train.progress=none", f"hydra.run.dir={run}", cwd=tmp)
    assert r.returncode == 0, r.stderr
    env = offline_env(no_proxy="127.0.0.1,localhost")
    proc = subprocess.Popen([sys.executable, "-m", "ganlab", "board", str(run)], cwd=tmp, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    line = ""
    t0 = time.monotonic()
    while "http://" not in line:
        line = proc.stdout.readline()
        if proc.poll() is not None or time.monotonic() - t0 > 180:
            proc.kill()
            raise AssertionError(f"ganlab board did not start: {line} {proc.stderr.read()}")
    url = line[line.index("http://"):].split()[0]
    yield {"proc": proc, "url": url, "run": run, "tmp": tmp}
    if proc.poll() is None:
        proc.kill()


@pytest.mark.slow
def test_board_serves_the_runs_scalars_and_images_over_http(board):
    url = board["url"]
    assert url.startswith("http://127.0.0.1:")
    tags = _poll_json(url + "data/plugin/scalars/tags", lambda t: "Loss/D" in t.get("tb", {}))["tb"]
    assert {"Loss/D", "Loss/G", "D/D(x)", "D/D(G(z))", "Grad/D_norm", "Health/diversity"} <= set(tags)
    points = json.loads(_get(url + "data/plugin/scalars/scalars?run=tb&tag=Loss/D"))
    assert [p[1] for p in points] == [5, 10, 15, 20]  # (wall time, step, value) per logged step
    images = _poll_json(url + "data/plugin/images/tags", lambda t: "Samples/fixed_z" in t.get("tb", {}))["tb"]
    assert {"Samples/fixed_z", "Samples/real"} <= set(images)
    entries = json.loads(_get(url + "data/plugin/images/images?run=tb&tag=Samples/fixed_z"))
    assert [e["step"] for e in entries] == [10, 20]
    data = _get(url + "data/plugin/images/individualImage?" + entries[-1]["query"])
    assert data == read_events(board["run"] / "tb").Images("Samples/fixed_z")[-1].encoded_image_string
    assert Image.open(io.BytesIO(data)).size == (242, 242)  # 8 x 8 samples of 28 px, 2 px apart


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium; "
                                             "scripts/test installs it where it runs as root with apt-get)")
@pytest.mark.slow
def test_a_headless_chromium_renders_the_runs_scalars(board, tmp_path):
    url = board["url"]
    _poll_json(url + "data/plugin/scalars/tags", lambda t: "Loss/D" in t.get("tb", {}))
    page = url + "#timeseries"
    common = [CHROMIUM, *CHROMIUM_FLAGS, "--virtual-time-budget=20000"]
    env = offline_env(no_proxy="127.0.0.1,localhost")
    dom = subprocess.run([*common, f"--user-data-dir={tmp_path / 'profile1'}", "--dump-dom", page],
                         capture_output=True, text=True, timeout=120, env=env).stdout
    # the time-series dashboard: one group per tag prefix of the run, cards titled with the tag names
    groups = {g for g in ("D", "Grad", "Health", "Loss", "Perf") if f'class="group-title" title="{g}"' in dom}
    assert groups == {"D", "Grad", "Health", "Loss", "Perf"}, dom[-2000:]
    assert 'title="D/D(x)"' in dom and 'title="D/D(G(z))"' in dom
    shot = tmp_path / "board.png"
    subprocess.run([*common, f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120, env=env)
    img = Image.open(shot).convert("L")
    assert img.size == (1400, 1000)
    assert sum(1 for c in img.histogram() if c) > 20  # drawn: charts and text, not a blank page


@pytest.mark.slow
def test_board_stops_cleanly_on_ctrl_c_and_refuses_what_it_cannot_show(board):
    proc = board["proc"]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "ganlab board: stopped" in out, out + err
    assert "Traceback" not in err
    tmp = board["tmp"]
    (tmp / "empty").mkdir()
    for target, message in ((tmp / "nothing-here", "is not a directory"), (tmp / "empty", "no TensorBoard event files")):
        r = run_cli("board", str(target), cwd=tmp)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
