//! A short list of `Copy` items stored inline up to `N`, on the heap beyond: holders and
//! wanting clients of a task are nearly always one, so most tasks never allocate for them.

use std::ops::Deref;

pub(crate) enum SmallList<T: Copy + Default, const N: usize> {
    Inline(u8, [T; N]),
    Heap(Vec<T>),
}

impl<T: Copy + Default, const N: usize> Default for SmallList<T, N> {
    fn default() -> Self {
        SmallList::Inline(0, [T::default(); N])
    }
}

impl<T: Copy + Default, const N: usize> SmallList<T, N> {
    #[inline]
    pub(crate) fn push(&mut self, x: T) {
        match self {
            SmallList::Inline(len, items) => {
                let n = *len as usize;
                if n < N {
                    items[n] = x;
                    *len += 1;
                } else {
                    let mut v = Vec::with_capacity(2 * N + 1);
                    v.extend_from_slice(items);
                    v.push(x);
                    *self = SmallList::Heap(v);
                }
            }
            SmallList::Heap(v) => v.push(x),
        }
    }

    /// Keep the items for which `keep` holds, in order.
    #[inline]
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        match self {
            SmallList::Inline(len, items) => {
                let mut j = 0;
                for i in 0..*len as usize {
                    if keep(&items[i]) {
                        items[j] = items[i];
                        j += 1;
                    }
                }
                *len = j as u8;
            }
            SmallList::Heap(v) => v.retain(|x| keep(x)),
        }
    }

    /// Empty it, giving back any heap storage.
    #[inline]
    pub(crate) fn clear(&mut self) {
        if let SmallList::Inline(len, _) = self {
            *len = 0;
        } else {
            *self = SmallList::default();
        }
    }
}

impl<T: Copy + Default, const N: usize> Deref for SmallList<T, N> {
    type Target = [T];
    #[inline]
    fn deref(&self) -> &[T] {
        match self {
            SmallList::Inline(len, items) => &items[..*len as usize],
            SmallList::Heap(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SmallList;

    #[test]
    fn spills_and_retains_in_order() {
        let mut l: SmallList<u32, 2> = SmallList::default();
        for i in 0..5 {
            l.push(i);
        }
        assert_eq!(&*l, &[0, 1, 2, 3, 4]);
        l.retain(|&x| x % 2 == 0);
        assert_eq!(&*l, &[0, 2, 4]);
        l.clear();
        assert!(l.is_empty());
        l.push(7);
        l.push(8);
        l.retain(|&x| x != 7);
        assert_eq!(&*l, &[8]);
    }
}
