#!/usr/bin/env python3
"""CDK entry point of an app that adds the search component to the platform (cdk.json runs it)."""

import aws_cdk as cdk

from final_problem.app import build, one_line_errors, write_outputs

# A bad setting, or a component that breaks the registration contract, ends the app with
# one line on stderr (FINAL_PROBLEM_TRACEBACK=1 shows the traceback).
with one_line_errors():
    import final_problem_search  # noqa: F401  (registers the "search" component)

    app = cdk.App()
    write_outputs(app, build(app))
