"""Qt window for a Timepix3 Tango device (``tango-tpx gui``; optional extra ``gui``).

* :mod:`.link`: the connection to the device (events in, queued writes/commands out, reconnects);
* :mod:`.editors`: widgets bound to one attribute or command;
* :mod:`.plots`: hit map, ToF spectrum with the event window and ROI, rate trends;
* :mod:`.forms`: state header, counters, acquisition controls, processing settings;
* :mod:`.window`: the main window; :mod:`.app`: the ``gui`` sub-command and screenshots;
* :mod:`.demo`: ``tango-tpx demo --gui``.

Needs PyQt5 and pyqtgraph (Taurus supplies the application and the state colours).
"""
