//! The kernel dispatch off x86-64: only the scalar kernels exist, whatever kernel is asked for
//! (`Kernel::available` reports the SIMD ones missing, so none is selected).

use super::{
    scalar, ActBlock, Kernel, Q4_0x8, Q4_1x8, Q4_Kx8, Q5_0x8, Q5_Kx8, Q6_Kx8, Q8_0x8, GROUP,
};

pub(super) fn avx2_available() -> bool {
    false
}

pub(super) fn vnni_available() -> bool {
    false
}

pub(super) fn wide_available() -> bool {
    false
}

/// Two groups' results for `MR` activation rows (never produced here).
pub(super) type Pair<const MR: usize> = [[[f32; GROUP]; 2]; MR];

/// One weight type's tile: the scalar kernel.
macro_rules! scalar_only {
    ($name:ident, $fmt:ty) => {
        pub(super) fn $name<const MR: usize>(
            _: Kernel,
            w: &[$fmt],
            x: [&[ActBlock]; MR],
        ) -> [[f32; GROUP]; MR] {
            scalar::$name(w, x)
        }
    };
}

/// No kernel here runs two groups at once.
macro_rules! no_pairs {
    ($($name:ident: $fmt:ty),+ $(,)?) => {
        $(
            pub(super) fn $name<const MR: usize>(
                _: Kernel,
                _: [&[$fmt]; 2],
                _: [&[ActBlock]; MR],
            ) -> Option<Pair<MR>> {
                None
            }
        )+
    };
}

no_pairs!(
    q4_0_pair: Q4_0x8,
    q4_1_pair: Q4_1x8,
    q5_0_pair: Q5_0x8,
    q8_0_pair: Q8_0x8,
    q4_k_pair: Q4_Kx8,
    q5_k_pair: Q5_Kx8,
    q6_k_pair: Q6_Kx8,
);

scalar_only!(q4_0, Q4_0x8);
scalar_only!(q4_1, Q4_1x8);
scalar_only!(q5_0, Q5_0x8);
scalar_only!(q8_0, Q8_0x8);
scalar_only!(q4_k, Q4_Kx8);
scalar_only!(q5_k, Q5_Kx8);
scalar_only!(q6_k, Q6_Kx8);
