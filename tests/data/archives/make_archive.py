"""Write the archived example corpus of the current format version (run once per released version).

    python tests/data/archives/make_archive.py   # -> tests/data/archives/v<N>/{corpus/, expected.json}

The corpus is tiny (24 cells x 12 genes, both formats) and is committed, so a later scgrn that changes the
format must still read it (tests/data_prep/test_archives.py).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from data_prep.config import ShardConfig  # noqa: E402
from data_prep.manifest import CORPUS_FORMAT_VERSION  # noqa: E402
from data_prep.sharder import shard  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(2026)
    x = sp.random(24, 12, density=0.4, format="csr", random_state=rng, data_rvs=lambda n: rng.integers(1, 300, n))
    x = x.astype(np.int32)
    x[np.diff(x.indptr) == 0, 0] = 1
    obs = pd.DataFrame({"cell_type": pd.Categorical(rng.choice(["A", "B"], 24))}, index=[f"c{i}" for i in range(24)])
    adata = ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(12)]))
    out = HERE / f"v{CORPUS_FORMAT_VERSION}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    src = out / "source.h5ad"
    adata.write_h5ad(src)
    shard(
        ShardConfig(
            inputs=[src],
            out=out / "corpus",
            cells_per_shard=10,
            cells_per_sample=4,
            obs_columns=["cell_type"],
            val_fraction=0.25,
            command="tests/data/archives/make_archive.py",
        ),
        progress=False,
    )
    src.unlink()
    expected = {
        cid: {
            "genes": [f"G{j}" for j in adata.X[i].indices],
            "values": adata.X[i].data.tolist(),
            "cell_type": str(obs.cell_type.iloc[i]),
        }
        for i, cid in enumerate(obs.index)
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1))


if __name__ == "__main__":
    main()
