"""bench_infer on the tiny model: the issue's rows, the run's conditions in the JSON, both precisions."""

import json

from benchmarks import bench_infer


def test_rows_and_conditions_for_each_precision(tmp_path, capsys):
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.json"
        assert bench_infer.main(["--size", "tiny", "--threads", "1", "--precision", precision, "--e2e-steps", "2",
                                 "--step-repeats", "1", "--part-error", "--malloc-default", "--json", str(out)]) == 0
        res = json.loads(out.read_text())
        assert res["precision"] == precision and res["threads"] == 1 and res["date"].startswith("20")
        assert {"load_average_start", "load_average_end", "cpu_native_bf16", "malloc_keeps_freed_memory"} <= set(res)
        assert set(res["process_cpu_s"]) >= {"id_encoder", "guided_step", "vae_decode", "generation"}
        assert ("part_relative_error_vs_fp32" in res) == (precision == "bf16")
        table = capsys.readouterr().out
        for row in ("ID encoder", "guided step", "VAE decode", "end to end"):
            assert row in table


def test_authors_figures_sit_beside_full_size_cpu_rows():
    res = {"size": "full", "device": "cpu", "threads": 1, "precision": "bf16", "load_average_start": "1 1 1",
           "load_average_end": "1 1 1", "date": "2026", "malloc_keeps_freed_memory": True,
           "id_encoder_s": 3.0, "guided_step_s": 15.0, "vae_decode_s": 9.0, "process_cpu_s": {}}
    reference = bench_infer.reference_for(res)
    assert reference == bench_infer.REFERENCE_CPU_1THREAD
    assert "  29.90    0.50" in bench_infer.rows_table(res, reference)  # the guided step: authors, ratio
    assert bench_infer.reference_for({**res, "size": "tiny"}) is None
