"""The AI gateway with a deterministic profiler whose clock is the VM's instruction count (bench/ai/fuelprof.py).

The host answers WASI's clock with the fuel consumed so far; ticks switch the profiler on, then off and dump.
"""

import time
from _lsprof import Profiler

import ai_gateway
from proxywasm import hostcalls as hc
from proxywasm import set_root_context

PROF = Profiler(time.time_ns, 1.0)
_state = [0]


def _label(code: object) -> str:
    if hasattr(code, "co_filename"):
        return f"{code.co_filename.rsplit('/', 2)[-2:]}:{code.co_firstlineno}({code.co_name})"
    return str(code)


class ProfiledRoot(ai_gateway.GatewayRoot):
    def on_tick(self) -> None:
        _state[0] += 1
        if _state[0] == 1:
            PROF.enable()
            return
        PROF.disable()
        for e in PROF.getstats():
            sub = sum(c.callcount for c in (e.calls or ()))
            hc.log(2, f"FUELPROF\t{_label(e.code)}\t{e.callcount}\t{int(e.totaltime)}\t{int(e.inlinetime)}\t{sub}")
            for c in e.calls or ():
                hc.log(2, f"FUELSUB\t{_label(e.code)}\t{_label(c.code)}\t{c.callcount}\t{int(c.totaltime)}")
        PROF.clear()


set_root_context(ProfiledRoot)
