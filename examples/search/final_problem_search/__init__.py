"""Apache Solr in SolrCloud mode as a component of the platform (an example extension).

Importing this package registers the ``search`` component; enable it in cdk.json's
``components`` and configure it in its own section, ``"search": {"replicas": 5}``.
"""

from final_problem_search.chart import SOLR_IMAGE, SOLR_VERSION, SearchChart, SearchSettings

__all__ = ["SOLR_IMAGE", "SOLR_VERSION", "SearchChart", "SearchSettings"]
