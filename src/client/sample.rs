//! `vmreg registry sample-vm`: a VM made of bytes no one has seen, laid out in the library
//! as an Anka node keeps one, so push and pull can be tried without a Mac.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use uuid::Uuid;

use super::error::{ClientError, ClientResult};
use super::library::Library;

/// What a sample VM was made of.
#[derive(Clone, Debug, Serialize)]
pub struct SampleVm {
    /// The VM's UUID (its directory under `vm_lib/`).
    pub uuid: Uuid,
    /// The VM's name.
    pub name: String,
    /// Image layer file names, top first (the first is the hard drive).
    pub layers: Vec<String>,
    /// Bytes of all its files.
    pub size: u64,
}

/// Bytes of the sample's nvram, as small as a real one.
const NVRAM_SIZE: usize = 256 << 10;

/// Makes a VM named `name` in `lib` of `layers` image layers holding `size` bytes in all
/// (the nvram included), its bytes drawn from its fresh UUID so that no two samples share
/// a block. Refuses a name the library has already.
pub fn make_sample_vm(lib: &Library, name: &str, size: u64, layers: u32) -> ClientResult<SampleVm> {
    if name.is_empty() || name.contains(['/', '\n']) {
        return Err(ClientError::Invalid(format!(
            "invalid VM name {name:?}: use letters, digits, '-', '_' or '.'"
        )));
    }
    if layers == 0 {
        return Err(ClientError::Invalid("--layers must be at least 1".into()));
    }
    if size < 1 << 20 {
        return Err(ClientError::Invalid("--size must be at least 1MiB".into()));
    }
    if lib.vms()?.iter().any(|vm| vm.name == name) {
        return Err(ClientError::Conflict(format!(
            "the library {} has a VM named {name:?} already: pick another name",
            lib.root().display()
        )));
    }
    let uuid = Uuid::new_v4();
    let mut bytes = Bytes::seeded(uuid);
    let images = lib.root().join("img_lib");
    let vm_dir = lib.vm_dir(uuid);
    for dir in [&images, &vm_dir] {
        std::fs::create_dir_all(dir).map_err(|e| ClientError::io(dir, e))?;
    }
    let layer_bytes = size.saturating_sub(NVRAM_SIZE as u64);
    let names: Vec<String> = (0..layers)
        .map(|_| format!("{}.ank", Uuid::new_v4().simple()))
        .collect();
    for (i, file) in names.iter().enumerate() {
        // Whatever does not divide evenly goes to the top layer.
        let share = layer_bytes / u64::from(layers)
            + if i == 0 {
                layer_bytes % u64::from(layers)
            } else {
                0
            };
        bytes.write_file(&images.join(file), share)?;
    }
    bytes.write_file(&vm_dir.join("nvram"), NVRAM_SIZE as u64)?;
    let config = config_yaml(uuid, name, &names);
    let path = vm_dir.join("config.yaml");
    std::fs::write(&path, config).map_err(|e| ClientError::io(&path, e))?;
    Ok(SampleVm {
        uuid,
        name: name.to_string(),
        layers: names,
        size: layer_bytes + NVRAM_SIZE as u64,
    })
}

/// The `config.yaml` of an Anka VM: its hard drive is the top layer, the rest its parents.
fn config_yaml(uuid: Uuid, name: &str, layers: &[String]) -> String {
    let mut config = format!(
        "uuid: {uuid}\nname: {name}\nram: 4G\ncpu:\n  cores: 2\nfirmware:\n  type: uefi\n\
         nvram: true\nhard_drives:\n- controller: ablk\n  file: {}\n  pci_slot: 4\n\
         network_cards:\n- mode: shared\n  pci_slot: 5\n",
        layers[0]
    );
    if layers.len() > 1 {
        config.push_str("images:\n");
        for file in &layers[1..] {
            config.push_str(&format!("- {file}\n"));
        }
    }
    config
}

/// A stream of pseudo-random bytes (xorshift64*): fast enough to write gigabytes, and
/// different for every seed, so a store that deduplicates blocks cannot skip them.
struct Bytes {
    state: u64,
}

impl Bytes {
    fn seeded(uuid: Uuid) -> Self {
        let (hi, lo) = uuid.as_u64_pair();
        Self {
            state: (hi ^ lo.rotate_left(17)) | 1,
        }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let word = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    fn write_file(&mut self, path: &Path, len: u64) -> ClientResult<()> {
        let file = std::fs::File::create(path).map_err(|e| ClientError::io(path, e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            self.fill(&mut buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| ClientError::io(path, e))?;
            left -= n as u64;
        }
        out.flush().map_err(|e| ClientError::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_a_vm_the_library_reads_with_the_size_asked() {
        let dir = std::env::temp_dir().join(format!("vmreg-sample-{}", Uuid::new_v4().simple()));
        let lib = Library::new(&dir);
        let made = make_sample_vm(&lib, "demo", 3 << 20, 3).unwrap();
        let vm = lib.find("demo").unwrap();
        assert_eq!(vm.uuid, made.uuid);
        let files = lib.files(&vm).unwrap();
        assert_eq!(files.len(), 4, "three layers and the nvram");
        assert_eq!(files.iter().map(|f| f.size).sum::<u64>(), 3 << 20);
        assert_eq!(files[0].name, made.layers[0], "the top layer first");
        // Two samples share no bytes.
        let other = make_sample_vm(&lib, "other", 1 << 20, 1).unwrap();
        let a = std::fs::read(dir.join("img_lib").join(&made.layers[0])).unwrap();
        let b = std::fs::read(dir.join("img_lib").join(&other.layers[0])).unwrap();
        assert_ne!(a[..4096], b[..4096]);
        assert!(matches!(
            make_sample_vm(&lib, "demo", 1 << 20, 1),
            Err(ClientError::Conflict(_))
        ));
        assert!(make_sample_vm(&lib, "x", 1 << 20, 0).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
