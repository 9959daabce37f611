"""Processing a batch: fetch many pages at once, retry the flaky ones, decide from the results.

A ``BatchTask`` loads a list of items, runs ``process_item`` on each with at most
``concurrency()`` in flight, retries a failing item with ``item_retry()``, and hands every
outcome to ``finish`` in input order: the item's output, or the exception it ended with.
One bad item does not fail the batch; ``finish`` decides what the results mean.

Run it with ``python examples/batch.py``.
"""

from __future__ import annotations

import asyncio
import enum

import cano


class Crawl(enum.Enum):
    FETCH = enum.auto()
    PUBLISH = enum.auto()
    REVIEW = enum.auto()


class FakeWeb:
    """Stands in for HTTP: ``/flaky`` fails its first call, ``/gone`` always fails."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    async def get(self, url: str) -> str:
        self.calls[url] = self.calls.get(url, 0) + 1
        await asyncio.sleep(0.01)  # network latency
        if url == "/gone":
            raise LookupError(f"404 {url}")
        if url == "/flaky" and self.calls[url] == 1:
            raise ConnectionError(f"reset while fetching {url}")
        return f"<html>{url}</html>"


class FetchPages(cano.BatchTask[Crawl, str, str]):
    def __init__(self, web: FakeWeb) -> None:
        self.web = web

    def concurrency(self) -> int:
        return 4  # at most four requests in flight

    def item_retry(self) -> cano.RetryMode:
        return cano.RetryMode.fixed(2, 0.02)  # each page: up to 3 attempts, 20 ms apart

    async def load(self, res: cano.Resources) -> list[str]:
        return ["/", "/about", "/flaky", "/gone", "/blog", "/contact"]

    async def process_item(self, item: str) -> str:
        return await self.web.get(item)

    async def finish(self, res: cano.Resources, results: list[str | BaseException]) -> Crawl:
        pages = [r for r in results if isinstance(r, str)]
        failures = [r for r in results if isinstance(r, BaseException)]
        res.get("store", cano.MemoryStore).put("pages", pages)
        for error in failures:
            print(f"failed: {error!r}")
        return Crawl.REVIEW if failures else Crawl.PUBLISH


async def main() -> None:
    web = FakeWeb()
    store = cano.MemoryStore()
    resources: cano.Resources = cano.Resources().insert("store", store)
    workflow = (
        cano.Workflow[Crawl](resources)
        .register(Crawl.FETCH, FetchPages(web))
        .add_exit_states([Crawl.PUBLISH, Crawl.REVIEW])
    )
    final = await workflow.orchestrate(Crawl.FETCH)
    print(f"fetched {len(store.get('pages'))} pages, attempts per url: {web.calls}")
    print(f"finished in {final.name}")


if __name__ == "__main__":
    asyncio.run(main())
