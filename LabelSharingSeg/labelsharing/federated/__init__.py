"""Federated label sharing on Flower: many sites train one shared-label model, images never leave a site.

Sites send label statistics (the plan), trained weights and Dice numbers; the coordinator plans,
averages (FedAvg or FedProx; each task an equal share by default, or sites weighted by training
slices) and writes an ordinary model folder; a site that joins later adds its task as ``add-task``
adds one, the old sites replaying their own data.
Needs the ``federated`` extra (Flower, Python 3.11 or newer): ``pip install "labelsharing[federated]"``.
"""

from __future__ import annotations

from labelsharing.utils import lazy_exports

_EXPORTS = {
    "site_work": ("site_statistics", "prepare_site", "prepare_for_model", "site_model", "train_locally",
                  "evaluate_locally"),
    "coordination": ("plan_from_statistics", "input_size_from_statistics", "checkpoint_folder_for", "round_record",
                     "history_entry", "site_weights", "SITE_WEIGHTINGS", "joining_federation", "new_federation",
                     "EQUAL_REPLAY"),
    "flower_apps": ("DEFAULT_SETTINGS", "server_app", "client_app", "check_reply", "make_strategy", "average_round",
                    "evaluation_replies"),
    "launch": ("run_local", "run_coordinator", "run_site", "read_sites_file", "supernode_command"),
}
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
