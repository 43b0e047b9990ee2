"""The live Gradio app: pick a teacher and a prune ratio, watch dreams form and accuracy recover.

The app holds no method code of its own. :mod:`demo.settings` describes the controls;
:mod:`demo.runner` turns them into a :class:`dfkd_core.RecoveryConfig` and drives
:func:`dfkd_core.recover`; :mod:`demo.views` renders the events it yields; :mod:`demo.example`
replays a recorded run for the page to open on; :mod:`demo.startup` and :mod:`demo.sessions`
get the app ready and keep each visitor's run apart; :mod:`demo.app` lays out the page and launches it.
"""
