"""How a training step runs: eagerly, as one captured CUDA graph, compiled, and why not otherwise.

One function decides it for every caller (params validation, the stages, the engine, the bench),
so the rule is written once.
"""

from __future__ import annotations

from dataclasses import dataclass

from ffl.errors import SettingError

# torch.compile modes that capture CUDA graphs of their own (over forward and backward): they
# exclude the whole-step graph.
COMPILE_MODES_WITH_GRAPHS = ("reduce-overhead", "max-autotune")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class StepMode:
    cuda_graph: bool | None  # None: not decided (the device is not known yet)
    compile: str | None


def step_mode(
    method_cls,
    settings,
    device_type: str | None,
    precision: str,
    compile: str = "auto",
    cuda_graph: bool | str = "auto",
    processes: int = 1,
) -> StepMode:
    """The step of ``method_cls`` (with ``settings``) on ``device_type`` (None: unknown, check only).

    ``precision`` is resolved or ``auto`` (never fp16); ``compile`` is auto, off or a torch.compile
    mode; ``cuda_graph`` auto, True or False; ``processes`` the DDP world size. Raises SettingError
    for a combination that cannot run.
    """
    name = method_cls.name
    static = method_cls.static_step
    own = method_cls.has_own_step(settings)
    if processes > 1:
        # DDP reduces gradients once per forward of the wrapped model; a step of several updates
        # (DML's peers in turn) runs its networks outside that forward.
        if own:
            raise SettingError(
                "processes",
                f"{name}'s step updates the networks several times per batch, which DDP cannot split over "
                f"processes: train with one process, or choose the method's one-update step",
            )
        # A captured step would hold the gradient all-reduce inside a CUDA graph: not attempted.
        if cuda_graph is True:
            raise SettingError("cuda_graph", "the whole-step graph runs in one process: set it to auto or false")
        if compile in COMPILE_MODES_WITH_GRAPHS:
            raise SettingError("compile", f"{compile} brings CUDA graphs, not used under DDP: use default or off")
        cuda_graph = False
    explicit = compile not in ("auto", "off", None)
    if explicit and not static:
        raise SettingError("compile", f"{name} decides each step in Python: it trains eagerly (off)")
    if explicit and own:
        raise SettingError("compile", f"{name}'s step updates the networks several times per batch: set it to off")
    if cuda_graph is True:
        if not static:
            raise SettingError("cuda_graph", f"{name} decides each step in Python: set it to auto or false")
        if precision == "fp16":
            raise SettingError(
                "cuda_graph", "fp16's loss scaler syncs with the host every step: use precision bf16 or fp32"
            )
        if compile in COMPILE_MODES_WITH_GRAPHS:
            raise SettingError("compile", f"{compile} brings its own CUDA graphs: use default or off with cuda_graph")
        if device_type is not None and device_type != "cuda":
            raise SettingError("cuda_graph", f"true needs a CUDA device, this run is on {device_type} (set it to auto)")
    if device_type is None:
        return StepMode(None, None)
    cuda = device_type == "cuda"
    graph = cuda_graph is True or (
        cuda_graph == "auto" and cuda and static and precision != "fp16" and compile not in COMPILE_MODES_WITH_GRAPHS
    )
    if compile == "auto":
        mode = None if (not cuda or not static or own or graph or processes > 1) else "reduce-overhead"
    else:
        mode = None if compile in ("off", None) else compile
    return StepMode(graph, mode)
