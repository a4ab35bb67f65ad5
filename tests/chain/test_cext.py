"""The C fast path (``vaultkeeper._chainscan``) against the pure-Python one and the blake3 package.

The extension must accept exactly the chunks the Python fast path accepts, return the same
summaries, and leave every verification report byte-identical; the existing fuzz and report
tests run both ways here. Tests of the C code itself skip when the extension is not built.
"""

from __future__ import annotations

import importlib
import os
import random
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from blake3 import blake3

from vaultkeeper.chain import scan
from vaultkeeper.chain.format import Head, Record
from vaultkeeper.chain.verify import ChainReport, discover_chains, verify_chain
from vaultkeeper.chain.writer import ChainSealer

from . import test_fast_path as fast_path
from .helpers import edit, fixed_clock

REPO = Path(__file__).resolve().parents[2]


def _built_extension() -> types.ModuleType | None:
    try:
        module = importlib.import_module("vaultkeeper._chainscan")
    except ImportError:
        return None
    return module if hasattr(module, "API_VERSION") else None


NATIVE = _built_extension()
needs_native = pytest.mark.skipif(
    NATIVE is None or scan.backend() != "c",
    reason="vaultkeeper._chainscan is not built or is disabled (pip install -e . compiles it)",
)


@pytest.fixture(params=["c", "python"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test with the C fast path, then with the pure-Python one (worker processes too)."""
    if request.param == "c":
        if scan.backend() != "c":
            pytest.skip("vaultkeeper._chainscan is not built or is disabled")
        yield "c"
        return
    monkeypatch.setenv(scan.DISABLE_NATIVE_ENV, "1")
    with scan.python_only():
        assert scan.backend() == "python"
        yield "python"


# ---------------------------------------------------------------------- BLAKE3


def _own_blake3(data: bytes, step: int = 0) -> bytes:
    assert NATIVE is not None
    digest: bytes = NATIVE.blake3_digest(data, step)
    return digest


@needs_native
def test_own_blake3_matches_the_blake3_package_at_every_block_and_chunk_boundary() -> None:
    rng = random.Random(3)
    lengths = [0, 1, 63, 64, 65, 127, 128, 129, 1023, 1024, 1025, 2047, 2048, 2049, 3072, 3073]
    lengths += [4095, 4096, 4097, 8192, 16385, 31 * 1024, 100 * 1024, (1 << 20) + 7]
    lengths += [rng.randrange(0, 40_000) for _ in range(200)]
    for n in lengths:
        data = rng.randbytes(n)
        assert _own_blake3(data) == blake3(data).digest(), n
    assert _own_blake3(b"").hex() == (
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    )


@needs_native
def test_own_blake3_gives_the_same_hash_however_the_input_is_fed() -> None:
    rng = random.Random(4)
    for n in (0, 1, 64, 65, 1024, 1025, 3073, 9000, 70_000):
        data = rng.randbytes(n)
        expected = blake3(data).digest()
        for step in (1, 3, 63, 64, 65, 1000, 1024, 1025, 4096):
            if step == 1 and n > 10_000:
                continue
            assert _own_blake3(data, step) == expected, (n, step)


@needs_native
def test_own_blake3_hashing_many_inputs_at_once_matches_the_blake3_package() -> None:
    assert NATIVE is not None
    rng = random.Random(8)
    sizes = [0, 1, 63, 64, 65, 128, 129, 700, 1023, 1024]
    for _ in range(200):
        inputs = [
            rng.randbytes(rng.choice([*sizes, rng.randrange(1025)]))
            for _ in range(rng.randrange(23))
        ]
        assert NATIVE.blake3_chunks(inputs) == [blake3(x).digest() for x in inputs]


# ---------------------------------------------------------------------- scan equivalence


def _records(rng: random.Random, count: int, *, drop_at: int | None = None) -> list[Record]:
    """Records of varied sizes (up to ~3 KiB, so hashed bytes span several BLAKE3 chunks)."""
    sealer = ChainSealer(clock=fixed_clock())
    out: list[Record] = []
    for i in range(count):
        if i == drop_at:
            first = sealer.reserve()
            last = sealer.reserve()
            out.append(sealer.seal_drop(first, last, "buffer_full"))
            continue
        size = rng.choice([0, 5, 40, 900, 1000, 1100, 3000])
        payload = {"i": i, "note": 'Größe "L"\n\t\x01' + "x" * size, "n": -i * 7}
        out.append(sealer.seal(rng.choice(["order.created", "a", "T" * 64, "x:y-z_1.2"]), payload))
    return out


def _damage(rng: random.Random, clean: bytes) -> bytes:
    buf = bytearray(clean)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        pos = rng.randrange(len(buf))
        if op < 0.4:
            buf[pos] = rng.choice(
                b'0123456789abcdef{}":,\\\n -LOG_DROP' + bytes([rng.randrange(256)])
            )
        elif op < 0.55:
            del buf[pos]
        elif op < 0.7:
            buf.insert(pos, rng.randrange(256))
        elif op < 0.8:
            del buf[pos:]
        else:
            lines = bytes(buf).split(b"\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            if op < 0.9:
                lines[i], lines[j] = lines[j], lines[i]
            else:
                lines.insert(i, lines[j])
            buf = bytearray(b"\n".join(lines))
    return bytes(buf)


@needs_native
def test_c_and_python_fast_paths_accept_the_same_chunks_with_the_same_summaries() -> None:
    rng = random.Random(20260302)
    accepted = 0
    cases = 0
    for round_ in range(12):
        records = _records(rng, 14, drop_at=7 if round_ % 4 == 0 else None)
        lines = [r.line for r in records]
        for _ in range(250):
            a = rng.randrange(len(lines))
            b = rng.randrange(a + 1, len(lines) + 1)
            clean = b"".join(lines[a:b])
            data = clean if rng.random() < 0.15 else _damage(rng, clean)
            anchors = tuple(rng.sample(range(-2, 20), rng.randrange(4)))
            c_result = scan.scan_clean(data, anchors)
            assert c_result == scan.scan_clean_python(data, anchors), (data, anchors)
            cases += 1
            accepted += c_result is not None
    assert cases == 3000
    assert 150 < accepted < cases


@needs_native
def test_c_fast_path_proves_records_longer_than_one_blake3_chunk() -> None:
    records = _records(random.Random(5), 30)
    assert max(len(r.line) for r in records) > 3000
    buf = b"".join(r.line for r in records[2:])
    chunk = scan.scan_clean(buf, (29, 4, 4, 1, 2**60))
    assert chunk == scan.CleanChunk(
        lines=28,
        first_seq=2,
        first_prev=records[1].hash,
        last_seq=29,
        last_hash=records[29].hash,
        anchor_hashes=((29, records[29].hash), (4, records[4].hash), (4, records[4].hash)),
    )
    assert chunk == scan.scan_clean_python(buf, (29, 4, 4, 1, 2**60))


def test_chunks_with_a_log_drop_are_left_to_the_line_by_line_path(backend: str) -> None:
    records = _records(random.Random(6), 10, drop_at=5)
    assert scan.scan_clean(b"".join(r.line for r in records)) is None
    assert scan.scan_clean(b"".join(r.line for r in records[6:])) is not None


# ---------------------------------------------------------------------- existing tests, both ways


def test_random_damage_fuzz_passes_with_either_fast_path(backend: str, tmp_path: Path) -> None:
    fast_path.test_random_damage_is_never_accepted_by_the_fast_path(tmp_path)


def test_report_equivalence_passes_with_either_fast_path(backend: str, tmp_path: Path) -> None:
    fast_path.test_report_is_the_same_for_any_chunking_strict_mode_and_worker_processes(tmp_path)


def _write_segments(directory: Path, lines: list[bytes], per_segment: int) -> None:
    directory.mkdir(parents=True)
    for index, start in enumerate(range(0, len(lines), per_segment), start=1):
        path = directory / f"orders.{index:06d}.jsonl"
        path.write_bytes(b"".join(lines[start : start + per_segment]))


def _damage_on_disk(rng: random.Random, lines: list[bytes]) -> list[bytes]:
    lines = list(lines)
    for _ in range(rng.randint(1, 2)):
        i = rng.randrange(len(lines))
        op = rng.randrange(7)
        if op == 0:
            raw = bytearray(lines[i])
            raw[rng.randrange(len(raw) - 1)] ^= 1 << rng.randrange(7)
            lines[i] = bytes(raw)
        elif op == 1:
            del lines[i]
        elif op == 2:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif op == 4:
            lines[i] = edit(lines[i], reseal=rng.random() < 0.5, payload={"forged": i})
        elif op == 5:
            lines[-1] = lines[-1][: rng.randrange(len(lines[-1]))]
        else:
            lines.insert(i, b"not a record\n")
    return lines


def _reports(directory: Path, anchors: tuple[int, ...]) -> list[ChainReport]:
    [chain] = discover_chains([directory])
    heads = []
    for seq in anchors:
        for line in b"".join(p.read_bytes() for p in chain.segments).split(b"\n"):
            if f',"seq":{seq},'.encode() in line:
                heads.append(Head(seq, line[9:73].decode()))
                break
    return [
        verify_chain(chain, anchors=tuple(heads), chunk_bytes=size) for size in (4 << 20, 5000, 700)
    ]


@needs_native
def test_reports_on_damaged_chains_are_identical_with_and_without_the_extension(
    tmp_path: Path,
) -> None:
    rng = random.Random(20260303)
    kinds: set[str] = set()
    for case in range(120):
        records = _records(rng, 24, drop_at=rng.choice([None, None, 0, 11]))
        lines = [r.line for r in records]
        if case % 6:
            lines = _damage_on_disk(rng, lines)
        directory = tmp_path / f"c{case}"
        _write_segments(directory, lines, per_segment=rng.choice([5, 9, 100]))
        anchors = tuple(rng.sample(range(24), 2))
        with_c = _reports(directory, anchors)
        with scan.python_only():
            without = _reports(directory, anchors)
        assert with_c == without, case
        assert with_c[1:] == with_c[:-1], case
        kinds.update(str(f.kind) for f in with_c[0].findings)
    assert {"hash_mismatch", "broken_link", "gap", "duplicate", "reorder", "malformed"} <= kinds


# ---------------------------------------------------------------------- switching and building


def _backend_in_child(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", "from vaultkeeper.chain import scan; print(scan.backend())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    return out.stdout.strip()


def test_environment_variable_selects_the_pure_python_path() -> None:
    env = {k: v for k, v in os.environ.items() if k != scan.DISABLE_NATIVE_ENV}
    assert _backend_in_child({**env, scan.DISABLE_NATIVE_ENV: "1"}) == "python"
    expected = "c" if NATIVE is not None else "python"
    assert _backend_in_child({**env, scan.DISABLE_NATIVE_ENV: "0"}) == expected
    assert _backend_in_child(env) == expected


def test_an_extension_built_from_other_sources_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    stale = types.ModuleType("vaultkeeper._chainscan")
    stale.API_VERSION = 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vaultkeeper._chainscan", stale)
    assert scan._load_native() is None


def _build(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[Path]]:
    """Run setup.py build_ext on a copy of setup.py and the C sources (the checkout's
    pyproject.toml may need a newer setuptools than this environment has)."""
    work = tmp_path / "src-copy"
    (work / "src" / "vaultkeeper").mkdir(parents=True)
    (work / "setup.py").write_bytes((REPO / "setup.py").read_bytes())
    source = REPO / "src" / "vaultkeeper" / "_chainscan"
    target = work / "src" / "vaultkeeper" / "_chainscan"
    target.mkdir()
    for path in source.glob("*.[ch]"):
        (target / path.name).write_bytes(path.read_bytes())
    result = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", "lib", "--build-temp", "tmp"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
        check=False,
    )
    return result, sorted((work / "lib").rglob("_chainscan*"))


def test_build_without_a_c_compiler_succeeds_without_the_extension(tmp_path: Path) -> None:
    result, built = _build(tmp_path, CC="false", LDSHARED="false")
    assert result.returncode == 0, result.stderr
    assert 'building extension "vaultkeeper._chainscan" failed' in result.stderr
    assert built == []


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_build_with_a_c_compiler_produces_the_extension(tmp_path: Path) -> None:
    result, built = _build(tmp_path)
    assert result.returncode == 0, result.stderr
    assert [p.name.split(".")[0] for p in built] == ["_chainscan"]
