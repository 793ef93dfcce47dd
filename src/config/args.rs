//! [`IntoArgs`]: what a command's arguments may be given as.

/// A command's arguments: a `Vec<String>` as before, or an array or slice of `&str` or
/// `String`, so that no call needs `.into()` on each item.
///
/// ```
/// use oci_sandbox::ExecConfig;
///
/// let a = ExecConfig::new("python3", ["-c", "print(6*7)"]);
/// let b = ExecConfig::new("python3", vec!["-c".to_owned(), "print(6*7)".to_owned()]);
/// let none = ExecConfig::new("true", vec![]);
/// assert_eq!(a.args, b.args);
/// assert!(none.args.is_empty());
/// ```
///
/// It is implemented for `Vec<String>` and not for every `IntoIterator` of `Into<String>`
/// items: with a blanket implementation an empty `vec![]` (or `vec![x.into()]`) would no
/// longer say its item type, and every such call written so far would stop compiling.
pub trait IntoArgs {
    /// The arguments, owned.
    fn into_args(self) -> Vec<String>;
}

impl IntoArgs for Vec<String> {
    fn into_args(self) -> Vec<String> {
        self
    }
}

impl IntoArgs for &[&str] {
    fn into_args(self) -> Vec<String> {
        self.iter().map(|s| (*s).to_owned()).collect()
    }
}

impl IntoArgs for &[String] {
    fn into_args(self) -> Vec<String> {
        self.to_vec()
    }
}

impl<const N: usize> IntoArgs for [&str; N] {
    fn into_args(self) -> Vec<String> {
        self.iter().map(|s| (*s).to_owned()).collect()
    }
}

impl<const N: usize> IntoArgs for &[&str; N] {
    fn into_args(self) -> Vec<String> {
        self.iter().map(|s| (*s).to_owned()).collect()
    }
}

impl<const N: usize> IntoArgs for [String; N] {
    fn into_args(self) -> Vec<String> {
        self.into()
    }
}
