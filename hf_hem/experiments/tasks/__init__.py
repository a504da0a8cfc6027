"""The task table of the experiments layer: one [`~hf_hem.experiments.task.Task`] per `--task` name.

Adding a task is one module in this package with a subclass of `Task`, and one line in [`TASKS`]. `hf-hem compare`
offers the tasks whose `front_door` is `"compare"`, `hf-hem benchmark` those whose `front_door` is `"benchmark"`.
"""

from __future__ import annotations

from ..task import Task
from .adversarial import AdversarialTask
from .continual import ContinualTask
from .corruptions import CorruptionsTask
from .image import ImageTask
from .imbalance import ImbalanceTask
from .ood import OODTask
from .segmentation import SegmentationTask
from .text import TextTask
from .token import TokenTask


__all__ = ["TASKS", "get_task", "task_names"]

#: Every task by its canonical name.
TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        ImageTask(),
        SegmentationTask(),
        TextTask(),
        TokenTask(),
        OODTask(),
        ImbalanceTask(),
        ContinualTask(),
        AdversarialTask(),
        CorruptionsTask(),
    )
}


def task_names(front_door: str | None = None) -> dict[str, str]:
    """Every `--task` spelling (names and aliases) of the tasks of `front_door` (all with `None`), mapped to the
    canonical name."""
    return {
        alias: task.name
        for task in TASKS.values()
        if front_door is None or task.front_door == front_door
        for alias in (task.name, *task.aliases)
    }


def get_task(task: str | Task, front_door: str | None = None) -> Task:
    """The task of a name or alias (see [`task_names`]); a `Task` is returned as it is.

    Args:
        task (`str` or [`~hf_hem.experiments.task.Task`]): The `--task` value.
        front_door (`str`, *optional*): `"compare"` or `"benchmark"`: only accept that command's tasks.
    """
    if isinstance(task, Task):
        return task
    names = task_names(front_door)
    if task not in names:
        raise ValueError(f"task={task!r}; expected one of {', '.join(sorted(names))}.")
    return TASKS[names[task]]
