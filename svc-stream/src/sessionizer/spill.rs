//! A list that most sessions never fill, kept as one pointer until it holds
//! something (a `Vec` is three words, and every open session pays for its
//! fields whether it uses them or not).

/// An owned list: a null pointer while empty.
// The box is the point: one word in place of a `Vec`'s three.
#[allow(clippy::box_collection)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Spill<T>(Option<Box<Vec<T>>>);

impl<T> Default for Spill<T> {
    fn default() -> Self {
        Spill(None)
    }
}

impl<T> Spill<T> {
    #[inline]
    pub(super) fn as_slice(&self) -> &[T] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    /// The list to change, allocated if it was empty.
    pub(super) fn as_vec_mut(&mut self) -> &mut Vec<T> {
        self.0.get_or_insert_default()
    }

    /// Takes the list out, leaving this one empty.
    pub(super) fn take(&mut self) -> Vec<T> {
        self.0.take().map_or_else(Vec::new, |list| *list)
    }

    /// Puts a list in (an empty one frees its buffer).
    pub(super) fn put(&mut self, list: Vec<T>) {
        self.0 = (!list.is_empty()).then(|| Box::new(list));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spill_is_one_pointer_and_holds_what_is_put_in() {
        assert_eq!(std::mem::size_of::<Spill<String>>(), 8);
        let mut list = Spill::default();
        assert!(list.as_slice().is_empty());
        list.as_vec_mut().push(1);
        list.as_vec_mut().push(2);
        assert_eq!(list.as_slice(), [1, 2]);
        let taken = list.take();
        assert!(list.as_slice().is_empty());
        list.put(taken);
        assert_eq!(list.as_slice(), [1, 2]);
        list.put(Vec::new());
        assert_eq!(list, Spill::default());
    }
}
