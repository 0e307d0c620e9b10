"""The guide's examples, run as written: every bash and python block of README.md and the docs a
user follows on a host, in order, in a copy of this checkout, against the real server the
README's first block starts (`make serve`, on the ports a user gets). A line `# → ...` in a block
is the output it shows; the words in it must appear in what the block printed (loosely: labels,
keys and messages, not probabilities or spacing). A block preceded by `<!-- not run: why -->` is
skipped (a cluster, docker, or a step another doc runs)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration
DOCS = ["README.md", "docs/PROTOCOLS.md", "docs/MODELS.md", "docs/OPERATIONS.md", "docs/EXPERIMENTS.md"]
PORTS = (8080, 8081, 8082, 7070, 7071)
FENCE = re.compile(r"(?:<!-- not run: (?P<why>[^>]*) -->\s*\n)?```(?P<lang>\w*)\n(?P<code>.*?)\n```", re.S)
WORD = re.compile(r"[A-Za-z][A-Za-z_-]{2,}")
WRAPPER = """set -eo pipefail
[ -f "$DOC_STATE" ] && source "$DOC_STATE"
__before=$(compgen -v | sort)
{code}
for v in $(comm -13 <(echo "$__before") <(compgen -v | sort)); do
  [[ $v == __* ]] || declare -p "$v"
done >> "$DOC_STATE"
"""


@dataclass
class Block:
    doc: str
    lang: str
    code: str
    skip: str | None

    @property
    def expected(self) -> list[str]:
        return [line.split("# →", 1)[1] for line in self.code.splitlines() if "# →" in line]


def blocks(doc: str) -> list[Block]:
    text = (ROOT / doc).read_text()
    return [Block(doc, m["lang"], m["code"], m["why"]) for m in FENCE.finditer(text) if m["lang"] in ("bash", "python")]


def checkout_copy(tmp_path: Path) -> Path:
    """The tracked files (mtimes kept, so make rebuilds nothing), the venv and default checkpoint linked."""
    work = tmp_path / "checkout"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        if (ROOT / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / name)
    (work / ".venv").symlink_to(ROOT / ".venv")
    (work / "build").mkdir()
    (work / "build" / "efficientnet_lite0.pt").symlink_to(ROOT / "build" / "efficientnet_lite0.pt")
    return work


def run(block: Block, work: Path, state: Path) -> str:
    if block.lang == "bash":
        cmd = ["bash", "-c", WRAPPER.format(code=block.code)]
    else:
        cmd = [str(work / ".venv" / "bin" / "python"), "-c", block.code]
    env = {"PATH": f"{work / '.venv' / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "DOC_STATE": str(state),
           "LANG": "C.UTF-8"}  # fmt: skip
    out = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    printed = out.stdout + out.stderr
    assert out.returncode == 0, (
        f"{block.doc}: this block failed ({out.returncode}):\n{block.code}\n---\n{printed[-3000:]}"
    )
    return printed


def busy_ports(wait_s: float = 30) -> list[int]:
    """The user's ports still taken after `wait_s` (a server another test stopped may take a few
    seconds to let them go)."""
    deadline = time.monotonic() + wait_s
    while True:
        busy = [p for p in PORTS if socket.socket().connect_ex(("127.0.0.1", p)) == 0]
        if not busy or time.monotonic() > deadline:
            return busy
        time.sleep(1)


@pytest.mark.slow
def test_the_guides_examples_run_as_written(default_checkpoint, tmp_path):
    busy = busy_ports()
    if busy:
        pytest.fail(f"ports {busy} are taken: the guide's examples run `make serve` on the ports a user gets")
    work = checkout_copy(tmp_path)
    ran = []
    try:
        for doc in DOCS:
            for block in blocks(doc):
                if block.skip:
                    continue
                printed = run(block, work, tmp_path / "state.sh")
                for expected in block.expected:
                    missing = [w for w in WORD.findall(expected) if w not in printed]
                    assert not missing, (
                        f"{doc}: the block's output lacks {missing}:\n{block.code}\n---\n{printed[-2000:]}"
                    )
                ran.append(doc)
    finally:
        subprocess.run(["make", "stop"], cwd=work, capture_output=True, timeout=120)
    assert {d: ran.count(d) for d in DOCS} == {d: sum(not b.skip for b in blocks(d)) for d in DOCS}
    assert all(ran.count(d) >= 2 for d in DOCS)


def test_every_skipped_example_says_why():
    for doc in [*DOCS, "docs/KUBERNETES.md", "docs/PERFORMANCE.md"]:
        text = (ROOT / doc).read_text()
        for match in re.finditer(r"<!-- not run: ([^>]*) -->", text):
            assert len(match[1].strip()) > 10, (doc, match[0])
