//! Transfer-time estimate shared by placement and stealing.

use crate::core::Core;

/// Time to move the inputs of `slot` that `w` lacks, at Dask's default 100 MB/s.
pub(crate) fn transfer_us(core: &Core, slot: u32, w: u32) -> u64 {
    let t = &core.tasks[slot as usize];
    let mut missing = 0u64;
    for &d in t.deps.iter() {
        let dt = &core.tasks[d as usize];
        if !dt.who_has.contains(&w) {
            missing += dt.nbytes;
        }
    }
    missing / 100
}
