//! Which kernel runs: the [`Kernel`] families, what this CPU can run ([`Kernel::available`],
//! from the SIMD modules' feature checks), the fastest of those ([`Kernel::best`]), and the
//! process-wide choice ([`selected`]: a forced one, else `WICK_KERNEL`, else the best).

use super::arch;
use std::sync::atomic::{AtomicU8, Ordering};

/// The kernel families. All give bit-identical results; they differ in speed only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    Avx2,
    Avx512Vnni,
    /// AVX-512 VNNI on 512-bit registers, two weight groups (sixteen rows) at once.
    Avx512Wide,
}

impl Kernel {
    pub const ALL: [Kernel; 4] = [
        Kernel::Scalar,
        Kernel::Avx2,
        Kernel::Avx512Vnni,
        Kernel::Avx512Wide,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512Vnni => "avx512vnni",
            Kernel::Avx512Wide => "avx512wide",
        }
    }

    pub fn from_name(name: &str) -> Option<Kernel> {
        Kernel::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            Kernel::Avx2 => arch::avx2_available(),
            Kernel::Avx512Vnni => arch::vnni_available(),
            Kernel::Avx512Wide => arch::wide_available(),
        }
    }

    /// The fastest kernel this CPU runs.
    pub fn best() -> Kernel {
        Kernel::ALL
            .into_iter()
            .rev()
            .find(|k| k.available())
            .unwrap_or(Kernel::Scalar)
    }
}

/// 0: not chosen yet; otherwise 1 + the index in `Kernel::ALL`.
static SELECTED: AtomicU8 = AtomicU8::new(0);

/// The kernel in use: the one [`select`]ed, else `WICK_KERNEL` when it names an available
/// kernel, else [`Kernel::best`].
pub fn selected() -> Kernel {
    let v = SELECTED.load(Ordering::Relaxed);
    if v != 0 {
        return Kernel::ALL[v as usize - 1];
    }
    let k = kernel_from_env().unwrap_or_else(|_| Kernel::best());
    store(k);
    k
}

/// `WICK_KERNEL`, checked: `Ok(kernel)`, or why it cannot be used (the server reports this at
/// start-up). Unset means the best available.
pub fn kernel_from_env() -> Result<Kernel, String> {
    match std::env::var("WICK_KERNEL") {
        Err(_) => Ok(Kernel::best()),
        Ok(name) if name.is_empty() || name == "auto" => Ok(Kernel::best()),
        Ok(name) => match Kernel::from_name(&name) {
            Some(k) if k.available() => Ok(k),
            Some(k) => Err(format!(
                "WICK_KERNEL={name}: this CPU lacks the {} instructions",
                k.name()
            )),
            None => Err(format!(
                "WICK_KERNEL={name}: expected auto, scalar, avx2, avx512vnni or avx512wide"
            )),
        },
    }
}

fn store(k: Kernel) {
    let i = Kernel::ALL.iter().position(|&x| x == k).unwrap_or(0);
    SELECTED.store(i as u8 + 1, Ordering::Relaxed);
}

/// Forces a kernel for the whole process (benchmarks compare kernels in one run). Refuses one
/// the CPU cannot run.
pub fn select(k: Kernel) -> Result<(), String> {
    if !k.available() {
        return Err(format!("this CPU cannot run the {} kernel", k.name()));
    }
    store(k);
    Ok(())
}
