"""Worker processes start together: their migrations and WAL self-checks must not trip over each other."""

from __future__ import annotations

import threading

from flwd_server.store.sqlite import Store


def test_concurrent_migrations_of_one_database_all_succeed(tmp_path):
    path = tmp_path / "flwd.db"
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def migrate() -> None:
        barrier.wait()
        try:
            for _ in range(20):
                Store(path).migrate()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    store = Store(path)
    assert store.reader().execute("SELECT count(*) FROM meta WHERE key LIKE 'self_check%'").fetchone()[0] == 0
    store.close()
