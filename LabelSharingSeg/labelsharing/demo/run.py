"""``labelsharing demo`` (``make demo``): the whole story on the built-in synthetic tasks.

generate four tasks -> plan -> train label sharing on three -> add the fourth with replay ->
evaluate on the test splits -> print the Dice and forgetting tables -> write a report
(Markdown + PNG pictures) in the output folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from labelsharing.data import read_task_dataset
from labelsharing.demo.data import make_demo_datasets
from labelsharing.infer import evaluate_model, evaluation_table
from labelsharing.plan import plan_table, plan_tasks, summarise_tasks
from labelsharing.train import DEFAULT_REPLAY, Log, RunFolder, TrainingOptions, add_task, forgetting_table, train, \
    work_folder_for
from labelsharing.utils import SILENT, ProgressReporter, write_json_atomically

__all__ = ["DemoSettings", "run_demo"]


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo run; :meth:`quick` is a two-minute smoke version."""

    cases: int = 20
    epochs: int = 25
    add_task_epochs: int = 10
    steps_per_epoch: int = 30  # 750 training steps: make demo stays a few minutes on 2 CPU cores
    input_size: int | None = None

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(cases=8, epochs=12, add_task_epochs=5, steps_per_epoch=15, input_size=64)


def run_demo(out: str | Path, settings: DemoSettings = DemoSettings(), device: str = "auto", seed: int = 0,
             progress: ProgressReporter = SILENT, log: Log = print) -> Path:
    """Run the demo into ``out`` (re-runnable: its own earlier results are replaced).

    Returns:
        the path of the written report (``out/report.md``).
    """
    from labelsharing.demo.report import write_report
    from labelsharing.infer import Predictor

    out = Path(out)
    start = time.perf_counter()
    log(f"== 1/5 writing the four demo tasks ({settings.cases} training cases each) to {out / 'data'}")
    folders = make_demo_datasets(out / "data", cases=settings.cases, seed=seed)
    first, last = folders[:3], folders[3]

    log("== 2/5 the shared-label plan of all four tasks")
    plan = plan_tasks(summarise_tasks(folders, progress))
    log(plan_table(plan))
    plan.save_json(out / "plan.json")

    log(f"== 3/5 training one label-sharing model on {', '.join(f.name for f in first)}")
    options = TrainingOptions(epochs=settings.epochs, steps_per_epoch=settings.steps_per_epoch,
                              input_size=settings.input_size, device=device, seed=seed)
    three, four = out / "model_3tasks", out / "model_4tasks"
    for model in (three, four):  # the demo owns these outputs: an interrupted earlier demo starts over
        RunFolder(work_folder_for(model)).remove()
    train(first, three, options, force=True, progress=progress, log=log)

    log(f"== 4/5 adding {last.name} with replay {DEFAULT_REPLAY}")
    fine_tune = TrainingOptions(epochs=settings.add_task_epochs, steps_per_epoch=settings.steps_per_epoch,
                                learning_rate=5e-4, device=device, seed=seed)
    add_task(three, last, four, fine_tune, replay=DEFAULT_REPLAY, force=True, progress=progress, log=log)

    log("== 5/5 evaluating on the test splits")
    tasks = [read_task_dataset(f) for f in folders]
    before = evaluate_model(Predictor.from_model_dir(three, device=device), tasks[:3], progress)
    after = evaluate_model(Predictor.from_model_dir(four, device=device), tasks, progress)
    write_json_atomically(out / "dice_3tasks.json", before)
    write_json_atomically(out / "dice_4tasks.json", after)
    log("Dice of the 4-task model on the test splits")
    log(evaluation_table(after))
    forgetting = {t: {"before": before["tasks"][t]["mean_dice"], "after": after["tasks"][t]["mean_dice"]}
                  for t in before["tasks"]}
    log("Forgetting: test Dice of the old tasks before and after adding " + tasks[3].name)
    log(forgetting_table(forgetting).split("\n", 1)[1])
    report = write_report(out, plan, four, before, after, tasks, device=device,
                          seconds=time.perf_counter() - start)
    log(f"report written to {report} ({time.perf_counter() - start:.0f} s in all)")
    return report
