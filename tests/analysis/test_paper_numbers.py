"""The papers' numbers data file: all 24 tables, as printed, and each experiment sweeps exactly its rows.

Numbers are checked against values copied by hand from the papers (CARAFE ICCV 2019 Tables
1-10, CARAFE++ TPAMI Tables I-XIV); the sweep test composes each experiment config with Hydra
and expands ``hydra.sweeper.params`` as ``carafe-exp -m`` does, without training.
"""

from __future__ import annotations

from collections import Counter

import pytest

from carafe_exp.analysis.experiment_jobs import job_values, sweep_jobs
from carafe_exp.analysis.paper_numbers import TABLE2, paper_table, paper_tables

CARAFE_IDS = [f"carafe/table{n}" for n in range(1, 11)]
CARAFE_PP_IDS = [f"carafe_pp/table{n}" for n in range(1, 15)]
BEYOND_IDS = ["beyond/faster_rcnn", "beyond/upernet"]
ROMAN = "I II III IV V VI VII VIII IX X XI XII XIII XIV".split()


def test_all_24_tables_with_their_printed_numbers() -> None:
    tables = paper_tables()
    # Then the comparisons beyond the papers (published numbers of newer upsamplers), named so.
    assert list(tables) == CARAFE_IDS + CARAFE_PP_IDS + BEYOND_IDS
    assert [tables[i].number for i in CARAFE_PP_IDS] == ROMAN
    for table in tables.values():
        assert table.rows and table.title and table.needs
        for row in table.rows:
            assert set(row.values) == set(table.columns)


@pytest.mark.parametrize("table_id, label, column, value", [
    ("carafe/table1", "Mask R-CNN w/ CARAFE", "segm/AP", 35.9),          # [C] Tab. 1
    ("carafe/table2", "GUM", "bbox/APl", 48.1),                          # [C] Tab. 2
    ("carafe/table2", "P.S.", "Params", "2.4M"),                         # [C] Tab. 2
    ("carafe/table3", "Pixel Shuffle", "segm/AP", 34.4),                 # [C] Tab. 3
    ("carafe/table4", "FPN + M.H.", "segm/AP", 35.7),                    # [C] Tab. 4
    ("carafe/table5", "PSANet R-50", "pixel_acc", 80.17),                # [C] Tab. 5
    ("carafe/table6", "PPM + FUSE", "mIoU", 42.01),                      # [C] Tab. 6
    ("carafe/table7", "Global&Local", "L1", 6.78),                       # [C] Tab. 7
    ("carafe/table8", "C_m N/A", "bbox/APs", 22.9),                      # [C] Tab. 8
    ("carafe/table9", "k_enc 5 k_up 7", "bbox/AP", 38.1),                # [C] Tab. 9
    ("carafe/table10", "Sigmoid", "bbox/APm", 40.9),                     # [C] Tab. 10
    ("carafe_pp/table1", "Mask R-CNN w/ CARAFE++ R-101-DCNv2", "fps", 6.5),  # [C++] Tab. I
    ("carafe_pp/table2", "ResNet-101 w/ CARAFE++", "top5", 94.31),       # [C++] Tab. II
    ("carafe_pp/table3", "LIP", "fps", 10.8),                            # [C++] Tab. III
    ("carafe_pp/table4", "CARAFE++", "bbox/APm", 41.2),                  # [C++] Tab. IV
    ("carafe_pp/table5", "FPN + Backbone", "bbox/APl", 50.9),            # [C++] Tab. V
    ("carafe_pp/table7", "FPN + M.H. + B.K.", "segm/APl", 53.6),         # [C++] Tab. VII
    ("carafe_pp/table8", "UperNet R-101 w/ CARAFE++", "mIoU", 43.94),    # [C++] Tab. VIII
    ("carafe_pp/table9", "Backbone", "pixel_acc", 80.35),                # [C++] Tab. IX
    ("carafe_pp/table10", "Global&Local", "L1", 6.69),                   # [C++] Tab. X (6.78 in [C] Tab. 7)
    ("carafe_pp/table12", "C_m 4", "top1", 77.31),                       # [C++] Tab. XII
    ("carafe_pp/table13", "k_enc 3 k_up 5", "bbox/APs", 23.2),           # [C++] Tab. XIII
])
def test_numbers_as_printed(table_id: str, label: str, column: str, value: float | str) -> None:
    rows = {row.label: row for row in paper_table(table_id).rows}
    assert rows[label].value(column) == value


def _numbers(table_id: str) -> list[tuple]:
    return [tuple(row.values.values()) for row in paper_table(table_id).rows]


def test_repeated_tables_carry_their_own_numbers() -> None:
    # [C++] VI prints [C] Table 3's numbers; XI, XIII, XIV repeat Tables 8, 9, 10 except the default
    # row's AP_S/M/L (23.2/41.2/48.2 in CARAFE++ against 23.1/41.7/48.5 in CARAFE).
    assert _numbers("carafe_pp/table6") == _numbers("carafe/table3")
    for pp, c, default in (("table11", "table8", 2), ("table13", "table9", 3), ("table14", "table10", 2)):
        ours, theirs = _numbers(f"carafe_pp/{pp}"), _numbers(f"carafe/{c}")
        assert [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b] == [default]
        assert ours[default][3:] == (23.2, 41.2, 48.2) and theirs[default][3:] == (23.1, 41.7, 48.5)
    assert paper_table("carafe_pp/table6").same_as == "carafe/table3"


def test_lost_check_marks_say_which_rows_are_certain() -> None:
    # [C++] V, VII, IX lost their check marks in extraction: every row says whether it is certain and why.
    for table_id in ("carafe_pp/table5", "carafe_pp/table7", "carafe_pp/table9"):
        for row in paper_table(table_id).rows:
            assert row.certain is not None and row.evidence, (table_id, row.label)
    # Certain rows are those whose numbers repeat a row of known setting.
    table4 = _numbers("carafe/table4")
    table7 = paper_table("carafe_pp/table7")
    assert [tuple(r.values.values()) for r in table7.rows[:3]] == table4[:3]
    assert [r.certain for r in table7.rows] == [True, True, True, False, False, False]
    assert _numbers("carafe_pp/table9")[:7] == _numbers("carafe/table6")
    pfub = paper_table("carafe_pp/table9").rows[-1]
    upernet_pp = paper_table("carafe_pp/table8").rows[3]
    assert pfub.certain and tuple(pfub.values.values()) == tuple(upernet_pp.values.values())
    table5 = paper_table("carafe_pp/table5").rows
    assert tuple(table5[0].values.values()) == tuple(paper_table("carafe_pp/table4").rows[-1].values.values())
    assert tuple(table5[1].values.values()) == tuple(paper_table("carafe_pp/table3").rows[-1].values.values())


def test_table2_complexity_columns_feed_the_complexity_report() -> None:
    assert [(c.registry_key, c.flops, c.params) for c in TABLE2][-1] == ("carafe", "199k", "74k")
    assert len(TABLE2) == 9


@pytest.mark.parametrize("table_id", CARAFE_IDS + CARAFE_PP_IDS + BEYOND_IDS)
def test_experiment_sweeps_exactly_the_papers_rows(table_id: str) -> None:
    """``carafe-exp -m experiment=<table>`` runs one job per row of the paper, no more, no less."""
    table = paper_table(table_id)
    jobs = [tuple(sorted((k, repr(v)) for k, v in job_values(job).items())) for job in sweep_jobs(table_id)]
    rows = [tuple(sorted((k, repr(v)) for k, v in row.job.items())) for row in table.run_rows]
    assert Counter(jobs) == Counter(rows)
    assert len(jobs) == len(rows) == len(set(rows))


@pytest.mark.parametrize("table_id, label, column, value", [
    ("beyond/faster_rcnn", "FreqFusion", "bbox/AP", 39.4),   # Linwei-Chen/FreqFusion README
    ("beyond/faster_rcnn", "SAPA-B", "bbox/AP", 37.8),       # poppinace/sapa README
    ("beyond/faster_rcnn", "DySample+", "bbox/AP", 38.7),    # tiny-smart/dysample README
    ("beyond/faster_rcnn", "FADE", "bbox/AP", 38.5),         # tiny-smart/sapa README
    ("beyond/upernet", "FADE", "mIoU", 41.83),               # tiny-smart/sapa README
    ("beyond/upernet", "SAPA-B", "mIoU", 41.47),             # tiny-smart/sapa README
    ("beyond/faster_rcnn", "IndexNet", "bbox/AP", 37.6),     # poppinace/sapa README (spec newer-upsamplers §5)
    ("beyond/faster_rcnn", "A2U", "bbox/AP", 37.3),          # poppinace/sapa, tiny-smart/sapa READMEs
    ("beyond/upernet", "IndexNet", "mIoU", 41.42),           # tiny-smart/sapa README
    ("beyond/upernet", "A2U", "mIoU", 41.37),                # tiny-smart/sapa README
])
def test_beyond_tables_quote_the_published_numbers_with_their_source(table_id: str, label: str, column: str,
                                                                     value: float) -> None:
    table = paper_table(table_id)
    row = {row.label: row for row in table.rows}[label]
    assert row.value(column) == value and row.source
    assert table.name.startswith("Beyond the papers") and table.notes[0].startswith("Not a table of the CARAFE papers")
