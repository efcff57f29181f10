import re

from shared.config import DEFAULT_METRICS_PORTS
from tests.harness import REPO_ROOT


def test_prometheus_scrapes_every_service_on_its_default_metrics_port() -> None:
    config = (REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    scraped = {
        service: int(port)
        for port, service in re.findall(r'targets: \["127\.0\.0\.1:(\d+)"\]\s+labels: \{service: (\w+)\}', config)
    }
    assert scraped == DEFAULT_METRICS_PORTS
