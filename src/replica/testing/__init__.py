"""Property-based testing for replica and for applications built on it.

Needs hypothesis (``pip install replica[testing]``). What is here:

- ``replica.testing.strategies``: record values (every type the record layer
  keeps, ints of any size), record and text edits, network steps, schedules
  and run plans;
- :class:`Fleet`: a relay and devices on real stores, linked by a deterministic
  simulated network that drives the sans-I/O sessions (no sockets, no sleeps);
- :class:`Monitor` and :func:`check_converged`: the invariants;
- :class:`FleetMachine`, :class:`ConvergenceMachine`, :class:`DifferentialMachine`:
  hypothesis state machines to run as they are or to subclass with your own
  document schema and invariants (see docs/testing.md).
"""

from __future__ import annotations

from replica.testing.backends import Backend, FaultyStore, LmdbBackend, MemoryBackend
from replica.testing.checks import Monitor, check_converged, observe, replayed
from replica.testing.clientids import ClientIds
from replica.testing.ledger import Ledger
from replica.testing.links import Link, Node, canonical, describe
from replica.testing.machine import ConvergenceMachine, DifferentialMachine, FleetMachine, devices
from replica.testing.network import Fleet
from replica.testing.strategies import (
    Action,
    Delete,
    Edit,
    Erase,
    Insert,
    NetworkStep,
    Put,
    RunPlan,
    Update,
    apply_edit,
    edits,
    fault_steps,
    network_steps,
    record_edits,
    record_fields,
    record_values,
    run_plans,
    schedules,
    text_edits,
)

__all__ = [
    "Action",
    "Backend",
    "ClientIds",
    "ConvergenceMachine",
    "Delete",
    "DifferentialMachine",
    "Edit",
    "Erase",
    "FaultyStore",
    "Fleet",
    "FleetMachine",
    "Insert",
    "Ledger",
    "Link",
    "LmdbBackend",
    "MemoryBackend",
    "Monitor",
    "NetworkStep",
    "Node",
    "Put",
    "RunPlan",
    "Update",
    "apply_edit",
    "canonical",
    "check_converged",
    "describe",
    "devices",
    "edits",
    "fault_steps",
    "network_steps",
    "observe",
    "record_edits",
    "record_fields",
    "record_values",
    "replayed",
    "run_plans",
    "schedules",
    "text_edits",
]
