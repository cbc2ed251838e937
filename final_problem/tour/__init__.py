"""The concepts tour: find the running platform and demonstrate what it is for.

:mod:`~final_problem.tour.discovery` finds the endpoints, :mod:`~final_problem.tour.local`
starts the real servers on this machine (``--local``), :mod:`~final_problem.tour.demos`
holds one narrated demonstration per concept; ``final-problem`` (:mod:`final_problem.cli`)
is the command line.
"""
