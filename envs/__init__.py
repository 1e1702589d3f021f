"""Simulation environments (LIBERO on robosuite/MuJoCo), scripted experts and demo collection.

Imports nothing of this project's other packages (see DESIGN.md). Heavy modules (libero,
robosuite, mujoco) are imported lazily by the modules that need them.
"""
