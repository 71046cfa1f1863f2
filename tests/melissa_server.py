"""The training hook of the talk's Melissa server (HeatPDEServerDL.process_simulation_data),
ported to `model.adapter` with `model.adapter_message = "melissa"` by changing its signature line
only (the SimulationData annotation dropped; `self` is onlinetrain's MelissaStudy view). The
`record(...)` call is the test's: it saves what each message carried, for the comparison with the
solver's own output (tests/test_melissa_api.py)."""
import json
import os

import numpy as np
import torch
from typing_extensions import override


def record(msg, config_dict):
    d = os.path.join(config_dict.output.dir, "seen")
    os.makedirs(d, exist_ok=True)
    base = os.path.join(d, f"{msg.simulation_id}-{msg.time_step}")
    for name, a in msg.data.items():
        np.save(f"{base}-{name}.npy", a)
    with open(f"{base}.json", "w") as f:
        json.dump({"parameters": msg.parameters, "metadata": msg.metadata,
                   "fields": sorted(msg.data)}, f)


@override
def process_simulation_data(self, msg, config_dict: dict):
    record(msg, config_dict)  # (the test's line)
    field = "temperature"
    # cast msg.data to float32
    x = torch.from_numpy(
        np.array(msg.parameters[-self.nb_parameters:] + [msg.time_step], dtype=np.float32)
    )
    y = torch.from_numpy(msg.data[field].astype(np.float32))
    return x, y
