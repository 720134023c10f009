"""What XLA makes of a step: its FLOPs (``flops``), the peaks of the devices it runs on (``devices``),
its HLO text (``hlo``), collectives and memory (``hlo_stats``), its roofline bound (``roofline``) and
its device time in a profiler trace (``profile``). Public JAX API only (``jax.stages``' lowered and
compiled programs, their text and cost analysis, ``jax.profiler``), no ``jax._src``.
"""

from smilejax.xla.devices import peak_flops
from smilejax.xla.flops import step_flops

__all__ = ["peak_flops", "step_flops"]
