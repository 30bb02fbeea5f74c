# Sourced by the H200 runners: unpacks the carried Vulkan/EGL loaders (.gl/*.deb), points
# the Vulkan loader at the NVIDIA driver, picks wgpu's Vulkan backend, and makes $OUT.
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
export WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
