"""The 10-minute soak (benchmarks/soak.py) as a test: nothing lost, RSS flat."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MINUTES = float(os.environ.get("RABBITMESH_SOAK_MINUTES", "10"))
SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


@pytest.mark.timeout(int(MINUTES * 60 + 600))
async def test_soak_memory_stays_flat_and_nothing_is_lost():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SOAK), "--minutes", str(MINUTES), "--max-growth", "0.1"
    )
    # The script exits 1 when an accepted event was lost or RSS grew more than 10 % from the
    # end of warm-up (the first fifth) to the end; its figures go to the test's output.
    assert await proc.wait() == 0
