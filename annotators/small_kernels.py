"""Small compiled kernels that light modules load on first use, so that importing them (the annotator contract,
the configs, which import the events math) does not import numba: the float16 finiteness test of
`annotators.base.all_finite` and the splat of `annotators.activity_residual.splat_max`."""

from __future__ import annotations

import numba
import numpy as np

_EXP_MASK = np.uint16(0x7C00)  # a half float is NaN or inf exactly when its five exponent bits are all set
_ABS_MASK = np.uint16(0x7FFF)


@numba.njit(cache=True, nogil=True)
def half_bits_finite(bits: np.ndarray) -> bool:
    """Whether every float16 whose bits (uint16, 1-D) holds is finite: the largest magnitude bit pattern is below
    the exponent-all-set ones. One pass with no temporaries (a max reduction that vectorises): numpy's mask and
    compare allocate two arrays as big as the input, whose page faults cost 4x the test on a clip's flows."""
    m = np.uint16(0)
    for i in range(bits.shape[0]):
        m = max(m, bits[i] & _ABS_MASK)
    return m < _EXP_MASK


@numba.njit(cache=True, nogil=True)
def splat_max_into(out: np.ndarray, values: np.ndarray, flow: np.ndarray) -> None:
    """out[landing pixel] = max(out there, value) for every pixel's value and its (h, w, 2) flow rounded to the
    nearest pixel (NaN wins, as in np.maximum); non-finite flow lands where it starts; landings outside are dropped."""
    h, w = values.shape
    for y in range(h):
        for x in range(w):
            fx, fy = np.float64(flow[y, x, 0]), np.float64(flow[y, x, 1])
            tx = np.rint(x + (fx if np.isfinite(fx) else 0.0))
            ty = np.rint(y + (fy if np.isfinite(fy) else 0.0))
            if 0 <= tx < w and 0 <= ty < h:
                v, o = values[y, x], out[int(ty), int(tx)]
                if np.isnan(o) or np.isnan(v):
                    out[int(ty), int(tx)] = np.nan
                elif v > o:
                    out[int(ty), int(tx)] = v
