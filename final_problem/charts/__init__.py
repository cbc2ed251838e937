"""The platform's charts, one module per component; importing this registers them."""

from final_problem.charts.base import BaseChart
from final_problem.charts.cadence import CadenceChart
from final_problem.charts.consul import ConsulChart
from final_problem.charts.demo import DemoChart
from final_problem.charts.envoy import EnvoyChart
from final_problem.charts.kafka import KafkaChart
from final_problem.charts.postgres import PostgresChart
from final_problem.charts.redis import RedisChart
from final_problem.charts.zookeeper import ZooKeeperChart

__all__ = [
    "BaseChart", "CadenceChart", "ConsulChart", "DemoChart", "EnvoyChart", "KafkaChart", "PostgresChart",
    "RedisChart", "ZooKeeperChart",
]
