"""The dashboard link that the command line, the demo and the notebook print serves the
dashboard after the default install (bokeh is a dependency), not "Dask needs bokeh"."""

import urllib.request

from distributed import Client, LocalCluster


def _get(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read().decode("utf-8", "replace")


def test_dashboard_page_renders():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        link = client.dashboard_link
        assert link.startswith("http://")
        status, page = _get(link.replace("/status", "") + "/status")
        assert status == 200
        assert "needs bokeh" not in page.lower()
        assert "bokeh" in page.lower()  # the page embeds bokeh's document
        status, page = _get(link.replace("/status", "") + "/individual-task-stream")
        assert status == 200 and "needs bokeh" not in page.lower()
