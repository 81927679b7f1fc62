"""numba kernels that draw the particles of each trigger and place them as non-overlapping
pixel clusters (the scene), with their own splitmix64 random generator.

Hits go to a hit table ``H`` (int64, shape (N_ROWS, n)), one column per hit, rows ``R_*``.
Units: times int64 fine units of 25/4096 ns; ToT counts of 25 ns; positions in pixels.
"""

from __future__ import annotations

import numba
import numpy as np

_GRID = 8  # sub-pixel cells per pixel for the neighbour-order table


def _neighbour_order() -> np.ndarray:
    """ORDER[i, j, r] = (dx, dy) of the r-th nearest pixel (5x5 around the nearest one) to a
    centre at sub-pixel cell (i, j), i.e. offset ((i + 0.5) / G - 0.5, (j + 0.5) / G - 0.5)."""
    d = np.arange(-2, 3)
    dx, dy = (a.ravel() for a in np.meshgrid(d, d, indexing="ij"))
    out = np.empty((_GRID, _GRID, 25, 2), np.int64)
    for i in range(_GRID):
        for j in range(_GRID):
            fx = (i + 0.5) / _GRID - 0.5
            fy = (j + 0.5) / _GRID - 0.5
            o = np.lexsort((dy, dx, (dx - fx) ** 2 + (dy - fy) ** 2))
            out[i, j, :, 0] = dx[o]
            out[i, j, :, 1] = dy[o]
    return out


_ORDER = _neighbour_order()
#: cos/sin of 2*pi*i/4096 (ring positions: the angle is quantised to 0.09 degrees)
_N_ANGLE = 4096
_SINCOS = np.stack([np.cos(2 * np.pi * np.arange(_N_ANGLE) / _N_ANGLE),
                    np.sin(2 * np.pi * np.arange(_N_ANGLE) / _N_ANGLE)], axis=1)
#: exp(-d2 / 2) sampled every 1/256 of d2 up to 64 (ToT profile of a cluster, d2 in sigma^2)
_EXP_STEP = 256
_EXP = np.exp(-0.5 * np.arange(64 * _EXP_STEP + 1) / _EXP_STEP)


# rows of the hit table H (int64, shape (N_ROWS, n)): toa (fine units, pixel-representable);
# PACK = chip-local x | y << 8 | ToT << 16 | chip << 26 (all the words need); for the truth
# only: frame x, y (= local x, y for a single chip), global trigger number and global
# particle number (-1 for noise)
R_TOA, R_PACK, R_XF, R_YF, R_TRIG, R_PART = range(6)
N_ROWS = 6


@numba.njit(cache=True, inline="always")
def _frame_to_local(X, Y, quad):
    if not quad:
        return X, Y, 0
    if X >= 258:
        if Y >= 258:
            return X - 258, 513 - Y, 0
        return 513 - X, Y, 1
    if Y >= 258:
        return X, 513 - Y, 3
    return 255 - X, Y, 2


@numba.njit(cache=True, inline="always")
def _rand_u64(state):
    """splitmix64 step: advances state[0], returns 64 random bits (uint64)."""
    state[0] += np.uint64(0x9E3779B97F4A7C15)
    z = state[0]
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(cache=True, inline="always")
def _rand(state):
    """Uniform float64 in [0, 1)."""
    return np.float64(_rand_u64(state) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(cache=True, inline="always")
def _randn(state):
    """Approximately standard normal: Irwin-Hall sum of four 16-bit uniforms (tails cut at 3.46)."""
    z = _rand_u64(state)
    m = np.uint64(0xFFFF)
    s4 = np.float64((z & m) + ((z >> np.uint64(16)) & m) + ((z >> np.uint64(32)) & m) + (z >> np.uint64(48)))
    return (s4 * (1.0 / 65536.0) - 2.0) * 1.7320508075688772


@numba.njit(cache=True, error_model="numpy")
def _gen_particles(state, trig_t, trig_k, n_per, e_frac, e_tof_u, e_sig_u, e_lo, e_hi, e_ring_w,
                   pk_tof_u, pk_sig_u, pk_cum, pk_ring_r, pk_ring_w, i_lo, i_hi, tot_lo, tot_hi,
                   size, cen, quad, busy, order, sincos, exptab, sigma_px, jitter_u, walk_u, sep_u, min_toa,
                   max_tries, uniform_only, part_base, full, H, h0,
                   p_trig, p_tof, p_cx, p_cy, p_e, p_acc):
    """Generate the particles of the given triggers and place them as non-overlapping clusters.

    Per trigger (time trig_t, global number trig_k, n_per particles): species, time of flight,
    size, centre ToT; then species by species (electrons first, then the ion peaks by time of
    flight) each particle takes the first candidate position
    (ring, then uniform; up to max_tries each) whose footprint and 8 neighbours are idle in
    ``busy`` (int64 [x, y], fine units; updated with dead time + sep_u). Hits go to H columns
    h0.. (rows R_*; with full=False only the rows the words need), accepted particles are
    numbered from part_base. The per-particle outputs
    p_* are filled for every particle (p_acc False when it found no room).
    Returns the column after the last hit written.
    """
    nh = h0
    g = order.shape[0]
    inv_s2 = 256.0 / (sigma_px * sigma_px)  # d2 -> index into exptab
    n_exp = exptab.shape[0] - 1
    n_ang = sincos.shape[0]
    walk = np.empty(1024, np.float64)  # time walk (fine units) per ToT
    walk[0] = walk_u
    for tt in range(1, 1024):
        walk[tt] = walk_u / tt
    n_acc = 0
    n_pk = pk_tof_u.shape[0]
    maxn = 0
    for k in range(n_per.shape[0]):
        maxn = max(maxn, n_per[k])
    tmp_t = np.empty(maxn, np.int64)
    tmp_sp = np.empty(maxn, np.int64)
    tmp_n = np.empty(maxn, np.int64)
    tmp_pk = np.empty(maxn, np.float64)
    srt = np.empty(maxn, np.int64)
    cnt = np.zeros(n_pk + 2, np.int64)
    # rank of each species (index sp + 1, electrons sp = -1 first) by mean time of flight
    pk_rank = np.empty(n_pk + 1, np.int64)
    pk_rank[0] = 0
    po = np.argsort(pk_tof_u)
    for r in range(n_pk):
        pk_rank[po[r] + 1] = r + 1
    pi = 0
    for k in range(n_per.shape[0]):
        m = n_per[k]
        for j in range(m):
            if n_pk == 0 or _rand(state) < e_frac:
                sp = -1
                tof = e_tof_u + e_sig_u * _randn(state)
                n = e_lo + int(_rand(state) * (e_hi - e_lo + 1))
            else:
                u = _rand(state)
                sp = 0
                while sp < n_pk - 1 and u >= pk_cum[sp]:
                    sp += 1
                tof = pk_tof_u[sp] + pk_sig_u[sp] * _randn(state)
                n = i_lo + int(_rand(state) * (i_hi - i_lo + 1))
            tmp_t[j] = trig_t[k] + np.int64(np.floor(tof + 0.5))
            tmp_sp[j] = sp
            tmp_n[j] = n
            tmp_pk[j] = tot_lo + (tot_hi - tot_lo) * _rand(state)
        # process in species order (electrons, then the peaks by time of flight): the time
        # order that matters for the dead-time check, without a sort
        cnt.fill(0)
        for j in range(m):
            cnt[pk_rank[tmp_sp[j] + 1] + 1] += 1
        for r in range(n_pk + 1):
            cnt[r + 1] += cnt[r]
        for j in range(m):
            r = pk_rank[tmp_sp[j] + 1]
            srt[cnt[r]] = j
            cnt[r] += 1
        for jj in range(m):
            j = srt[jj]
            t = tmp_t[j]
            n = tmp_n[j]
            sp = tmp_sp[j]
            if sp < 0:
                rr = 0.0
                rw = e_ring_w
            else:
                rr = pk_ring_r[sp]
                rw = pk_ring_w[sp]
            p_trig[pi] = trig_k[k]
            p_tof[pi] = t - trig_t[k]
            p_e[pi] = sp < 0
            p_acc[pi] = False
            for attempt in range(2 * max_tries):
                if attempt < max_tries and not uniform_only:
                    r = rr + rw * _randn(state)
                    a = int(_rand(state) * n_ang)
                    cx = cen + r * sincos[a, 0]
                    cy = cen + r * sincos[a, 1]
                else:
                    cx = _rand(state) * size - 0.5
                    cy = _rand(state) * size - 0.5
                fx = np.floor(cx + 0.5)
                fy = np.floor(cy + 0.5)
                ix = int(fx)
                iy = int(fy)
                ci = min(max(int((cx - fx + 0.5) * g), 0), g - 1)
                cj = min(max(int((cy - fy + 0.5) * g), 0), g - 1)
                # bounding box of the footprint
                x0 = 1 << 30
                x1 = -(1 << 30)
                y0 = 1 << 30
                y1 = -(1 << 30)
                for q in range(n):
                    px = ix + order[ci, cj, q, 0]
                    py = iy + order[ci, cj, q, 1]
                    x0 = min(x0, px)
                    x1 = max(x1, px)
                    y0 = min(y0, py)
                    y1 = max(y1, py)
                if x0 < 0 or y0 < 0 or x1 >= size or y1 >= size:
                    continue
                # every pixel of the footprint and its 8 neighbours must be idle at t
                ok = True
                for ax in range(max(x0 - 1, 0), min(x1 + 2, size)):
                    for ay in range(max(y0 - 1, 0), min(y1 + 2, size)):
                        if busy[ax, ay] > t:
                            ok = False
                            break
                    if not ok:
                        break
                if not ok:
                    continue
                p_acc[pi] = True
                p_cx[pi] = cx
                p_cy[pi] = cy
                gp = part_base + n_acc
                n_acc += 1
                for q in range(n):
                    px = ix + order[ci, cj, q, 0]
                    py = iy + order[ci, cj, q, 1]
                    dd = (px - cx) * (px - cx) + (py - cy) * (py - cy)
                    e = int(dd * inv_s2 + 0.5)
                    tot = int(tmp_pk[j] * exptab[min(e, n_exp)] + 0.5)
                    if tot < 1:
                        tot = 1
                    elif tot > 1023:
                        tot = 1023
                    dt = jitter_u * _randn(state) + walk[tot]
                    toa = t + np.int64(np.floor(dt + 0.5))
                    if toa < min_toa:
                        toa = min_toa
                    toa -= toa & 255  # pixel-representable (1.5625 ns steps)
                    lx, ly, lc = _frame_to_local(px, py, quad)
                    H[R_TOA, nh] = toa
                    H[R_PACK, nh] = lx | (ly << 8) | (tot << 16) | (lc << 26)
                    if full:
                        H[R_XF, nh] = px
                        H[R_YF, nh] = py
                        H[R_TRIG, nh] = trig_k[k]
                        H[R_PART, nh] = gp
                    nh += 1
                    b = toa + np.int64(tot) * 4096 + sep_u
                    if b > busy[px, py]:
                        busy[px, py] = b
                break
            pi += 1
    return nh
