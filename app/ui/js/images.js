// Images picked, dropped or pasted by the user, made ready to send: decoded by the browser,
// scaled down in a canvas when large (the model sees small images anyway, and data URLs travel
// inside the JSON body), and turned into data URLs.

/** Longest side, in pixels, of an image sent to the model. */
export const MAX_SIDE = 1024;
/** Images at most this many bytes and within MAX_SIDE are sent as they are. */
const KEEP_AS_IS_BYTES = 1_000_000;
const ACCEPTED = ["image/png", "image/jpeg", "image/webp", "image/gif"];

/** Whether the file is an image type the UI can send. */
export function isSendableImage(file) {
  return ACCEPTED.includes(file.type);
}

/**
 * @param {File|Blob} file
 * @returns {Promise<{url: string, width: number, height: number, scaled: boolean}>}
 */
export async function prepareImage(file) {
  if (!isSendableImage(file)) throw new Error(`${file.name || "That file"} is not a PNG, JPEG, WebP or GIF image.`);
  const bitmap = await createImageBitmap(file).catch(() => {
    throw new Error(`${file.name || "That image"} could not be read.`);
  });
  const { width, height } = bitmap;
  const scale = Math.min(1, MAX_SIDE / Math.max(width, height));
  if (scale === 1 && file.size <= KEEP_AS_IS_BYTES) {
    bitmap.close();
    return { url: await readAsDataURL(file), width, height, scaled: false };
  }
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(width * scale));
  canvas.height = Math.max(1, Math.round(height * scale));
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  // PNG keeps line art and text crisp; photos are far smaller as JPEG.
  const type = file.type === "image/png" || file.type === "image/gif" ? "image/png" : "image/jpeg";
  let url = canvas.toDataURL(type, 0.88);
  if (type === "image/png" && url.length > KEEP_AS_IS_BYTES * 1.37) url = canvas.toDataURL("image/jpeg", 0.88);
  return { url, width: canvas.width, height: canvas.height, scaled: true };
}

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}
