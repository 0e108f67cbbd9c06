//! Id newtypes. Keys stay strings at the edges (users name tasks); inside the cluster every task
//! is a [`TaskId`] handed out by the scheduler, so hot messages carry 8 bytes instead of a key.

use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash,
            rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
        )]
        #[rkyv(derive(Debug, PartialEq, Eq, Hash), attr(allow(missing_docs)))]
        pub struct $name(pub u64);

        impl $name {
            /// The raw number.
            pub fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl From<&rkyv::Archived<$name>> for $name {
            fn from(a: &rkyv::Archived<$name>) -> Self {
                $name(a.0.to_native())
            }
        }
    };
}

id_type!(
    /// A task, numbered by the scheduler when its graph is accepted. Never reused.
    TaskId,
    "t"
);
id_type!(
    /// A worker, numbered by the scheduler when it registers.
    WorkerId,
    "w"
);
id_type!(
    /// A client connection, numbered by the scheduler.
    ClientId,
    "c"
);
