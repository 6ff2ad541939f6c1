"""What result.json records about how an engine ran its steps. Apart from the engine contract
(engine.py) so that the engines, which fill it in, and engine.py, which chooses among them, do not
import each other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EngineReport:
    """What result.json records about how the steps ran."""

    engine: str  # single | pipeline
    cuda_graph: bool = False  # some steps replayed a captured CUDA graph
    cuda_graph_note: str = ""  # why no graph, or which steps ran eagerly and why ("" if none)
    graphed_steps: int = 0
    eager_steps: int = 0
    data_on_device: bool = False  # the train split lived in device memory
    ops_per_step: int | None = None  # aten/fbgemm ops the host dispatched in one steady step
    ops_in_step: int | None = None  # ops one eager step dispatches (what a graph replays at once)
