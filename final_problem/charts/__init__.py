"""The platform's charts, one module per component; importing this registers them."""

from final_problem.charts.base import BaseChart

__all__ = ["BaseChart"]
