// Embeds the migration files: `migrations.rs` in OUT_DIR lists each dialect's
// files with their text, in version order, so the binaries carry them and a
// new file needs no code change. (sqlx's `migrate!` does the same through a
// proc macro that compiles both database drivers a second time for the host.)
use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut out = String::new();
    for dialect in ["postgres", "sqlite"] {
        let dir = root.join(dialect);
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|entry| entry.expect("a migrations folder entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "sql"))
            .collect();
        files.sort();
        // (version, description, text), named the way sqlx names a file
        // `<VERSION>_<DESCRIPTION>.sql`, so stored checksums and descriptions match.
        writeln!(
            out,
            "pub(super) const {}: &[(i64, &str, &str)] = &[",
            dialect.to_uppercase()
        )
        .unwrap();
        for path in files {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let (version, rest) = name
                .split_once('_')
                .unwrap_or_else(|| panic!("migration {name} is not <VERSION>_<DESCRIPTION>.sql"));
            let version: i64 = version
                .parse()
                .unwrap_or_else(|_| panic!("migration {name} has no integer version"));
            let description = rest.trim_end_matches(".sql").replace('_', " ");
            assert!(
                !description.ends_with(".up") && !description.ends_with(".down"),
                "migration {name}: reversible migrations are not used"
            );
            writeln!(
                out,
                "    ({version}, {description:?}, include_str!({:?})),",
                path.display().to_string()
            )
            .unwrap();
        }
        out.push_str("];\n");
    }
    let target = Path::new(&std::env::var("OUT_DIR").unwrap()).join("migrations.rs");
    std::fs::write(target, out).expect("writing migrations.rs");
}
