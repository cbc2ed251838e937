"""The platform's charts, one module per component; importing this registers them."""

from final_problem.charts.base import BaseChart
from final_problem.charts.cadence import CadenceChart
from final_problem.charts.postgres import PostgresChart
from final_problem.charts.redis import RedisChart
from final_problem.charts.zookeeper import ZooKeeperChart

__all__ = ["BaseChart", "CadenceChart", "PostgresChart", "RedisChart", "ZooKeeperChart"]
