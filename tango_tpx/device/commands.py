"""Commands of the ``Timepix3`` device. Each answers at once (well under 0.3 s): it only
sends a command to the armed pipeline and changes the State before it returns; whatever
takes time (draining, closing files, converting) runs in the background with State MOVING
and a Status that says what is being done.
"""

from __future__ import annotations

import os
from typing import Any

from tango import DevState
from tango.server import command

from ..pipeline.series import series_path
from .settings import fail

#: s Start waits for the receiver to confirm that the gate is open (it returns anyway).
GATE_CONFIRM_S = 0.15


class Commands:
    """Mixin of :class:`~tango_tpx.device.timepix3.Timepix3`: the commands."""

    _controller: Any
    _settings: dict[str, Any]

    # ---------------------------------------------------------------- helpers
    def _check_state(self, command_name: str, allowed: tuple[DevState, ...]) -> bool:
        """is_*_allowed helper: refuse with a message naming the current state."""
        state = self.get_state()
        if state in allowed:
            return True
        names = ", ".join(str(s) for s in allowed)
        hint = " Run Init to recover." if state == DevState.FAULT else ""
        if state == DevState.MOVING:
            hint = f" Wait for the transition to end ({self.get_status().splitlines()[0]})."
        fail("API_CommandNotAllowed",
             f"{command_name} is not allowed in state {state} (allowed in: {names}).{hint}",
             f"Timepix3.{command_name}")
        return False

    def _resolve_recording_path(self, name: str) -> str:
        name = str(name).strip()
        origin = "Timepix3.OpenFile"
        if not name:
            fail("Timepix3_BadPath", "OpenFile needs a file name (relative to RecordingPath) or an absolute path",
                 origin)
        base = str(self._settings["RecordingPath"])
        name = os.path.expanduser(name)
        if os.path.isabs(name):
            path = os.path.realpath(name)
        elif base:
            path = os.path.realpath(os.path.join(base, name))
        else:
            fail("Timepix3_BadPath", f"OpenFile({name!r}): a relative name needs RecordingPath; set "
                 "RecordingPath or give an absolute path", origin)
        if base and os.path.commonpath([path, base]) != base:
            fail("Timepix3_BadPath", f"OpenFile({name!r}): {path} is outside RecordingPath {base}; only files "
                 "inside RecordingPath are allowed", origin)
        if os.path.exists(path):
            fail("Timepix3_FileExists", f"OpenFile({name!r}): {path} already exists; choose a new name "
                 "(existing files are never overwritten)", origin)
        if not os.path.isdir(os.path.dirname(path)):
            fail("Timepix3_BadPath", f"OpenFile({name!r}): directory {os.path.dirname(path)} does not exist",
                 origin)
        return path

    def _start_record_path(self) -> tuple[str, bool]:
        """(raw file for the next acquisition or '', True if it is the series' next file)."""
        if self._pending_file:
            if os.path.exists(self._pending_file):
                fail("Timepix3_FileExists", f"Start: {self._pending_file} (opened with OpenFile) already exists "
                     "now; CloseFile and OpenFile a new name", "Timepix3.Start")
            return self._pending_file, False
        if not self._settings["AutoRecord"]:
            return "", False
        base = str(self._settings["RecordingPath"])
        if not base:
            fail("Timepix3_BadPath", "Start: AutoRecord needs RecordingPath (an existing directory)",
                 "Timepix3.Start")
        try:
            return series_path(base, self._settings["FilePrefix"], self._settings["FileIndex"]), True
        except FileExistsError as exc:
            fail("Timepix3_FileExists", f"Start refused: {exc.strerror}", "Timepix3.Start")
        return "", False

    # ---------------------------------------------------------------- commands
    def is_Start_allowed(self) -> bool:
        return self._check_state("Start", (DevState.ON,))

    @command(doc_in="Start an acquisition (ON -> RUNNING) with AcquisitionTime / AcquisitionTriggers; it "
                    "records to the file opened with OpenFile, or with AutoRecord to the next file of the series.")
    def Start(self) -> None:
        session = self._controller.session
        path, series = self._start_record_path()
        s = self._settings
        try:
            session.begin(float(s["AcquisitionTime"]), int(s["AcquisitionTriggers"]), path)
        except RuntimeError as exc:
            fail("Timepix3_StartFailed", f"Start failed: {exc}", "Timepix3.Start")
        self._pending_file = ""
        self._acq_series = series
        self._acq_recording = path
        with self._lock:
            self._prev_counts = None
        self.set_state(DevState.RUNNING)
        self.set_status(self._running_status())
        session.wait_open(GATE_CONFIRM_S)
        self._wake.set()

    def is_Stop_allowed(self) -> bool:
        return self._check_state("Stop", (DevState.RUNNING, DevState.FAULT))

    @command(doc_in="End the acquisition (RUNNING -> MOVING -> ON): draining and closing the file go on in "
                    "the background. In FAULT it closes the gate if it is open.")
    def Stop(self) -> None:
        session = self._controller.session if self._controller is not None else None
        if self.get_state() == DevState.FAULT:
            if session is not None:
                session.end()
            return
        self.set_state(DevState.MOVING)
        self.set_status("MOVING: stopping: closing the gate, draining the decoder and the centroid workers")
        session.end()
        self._wake.set()

    def is_OpenFile_allowed(self) -> bool:
        return self._check_state("OpenFile", (DevState.ON, DevState.RUNNING))

    @command(dtype_in=str, dtype_out=str,
             doc_in="File name relative to RecordingPath, or an absolute path (inside RecordingPath when that is "
                    "set). The file must not exist. In ON the next Start records into it; while RUNNING "
                    "recording starts now. Stop (or CloseFile) closes it.",
             doc_out="Absolute path of the raw file.")
    def OpenFile(self, name: str) -> str:
        ctrl = self._controller
        current = str(ctrl.recording_file or self._pending_file or "")
        if current:
            fail("Timepix3_AlreadyRecording", f"already recording to {current}; CloseFile first",
                 "Timepix3.OpenFile")
        path = self._resolve_recording_path(name)
        if self.get_state() == DevState.ON:
            self._pending_file = path
            self._refresh(period_end=False)
            self._wake.set()
            return path
        try:
            full = ctrl.session.open_file(path)
        except FileExistsError as exc:
            fail("Timepix3_FileExists", f"OpenFile({name!r}): {exc.filename or path} already exists; choose a "
                 "new name", "Timepix3.OpenFile")
        except (OSError, RuntimeError, TimeoutError) as exc:
            fail("Timepix3_OpenFailed", f"OpenFile({name!r}) failed: {exc}", "Timepix3.OpenFile")
        self._acq_recording = full
        self._refresh(period_end=False)
        self.set_status(self._running_status())
        self._wake.set()
        return str(full)

    def is_CloseFile_allowed(self) -> bool:
        return self._check_state("CloseFile", (DevState.ON, DevState.RUNNING, DevState.MOVING, DevState.FAULT))

    @command(doc_in="Stop recording (no-op when not recording); the file is finished in the background. "
                    "In ON it forgets a file opened for the next Start.")
    def CloseFile(self) -> None:
        if self._pending_file:
            self._pending_file = ""
        elif self._controller is not None:
            path = self._controller.session.close_file()
            if path:
                self._last_file = path
                self._acq_recording = ""
        self._refresh(period_end=False)
        if self.get_state() == DevState.RUNNING:
            self.set_status(self._running_status())
        self._wake.set()

    def is_ResetCounters_allowed(self) -> bool:
        return self._check_state("ResetCounters", (DevState.ON, DevState.RUNNING))

    @command(doc_in="Set all totals (and the current acquisition's counts) to zero; rates restart from the "
                    "next summary period.")
    def ResetCounters(self) -> None:
        self._controller.reset_counters()
        self._controller.session.reset_base()
        with self._lock:
            self._prev_counts = None
        self._refresh(period_end=False)
        self._wake.set()
