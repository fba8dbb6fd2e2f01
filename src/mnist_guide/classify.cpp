// classify: read handwritten digits as 28 x 28 binary PGM images, classify them with a TorchScript
// model, print one digit per image, one per line.
//
//   classify MODEL.pt IMAGE.pgm [IMAGE.pgm ...]     images named on the command line
//   classify MODEL.pt < IMAGES.pgm                  one or more PGM images, back to back, on stdin
//   classify MODEL.pt -                             the same, explicitly
//
// The model is what `mnist-guide export --format torchscript` writes: float32 [N, 1, 28, 28]
// pixels in [0, 1] in, logits [N, 10] out (the normalisation is inside it). Images are binary PGM
// ("P5", maxval 255): a short text header and then the 784 grey levels, white ink on black, as in
// MNIST. Exit status: 0 on success, 1 for an unreadable model or image, 2 for a usage error.
//
// Built by mnist_guide.export.build_classifier() against the libtorch inside the torch wheel.

#include <torch/script.h>

#include <cctype>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <istream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

constexpr int kSide = 28;
constexpr int kPixels = kSide * kSide;

// Skip whitespace and '#' comments between PGM header fields.
void skip_separators(std::istream& in) {
    while (true) {
        int c = in.peek();
        if (c == '#') {
            std::string comment;
            std::getline(in, comment);
        } else if (c != EOF && std::isspace(c)) {
            in.get();
        } else {
            return;
        }
    }
}

int read_header_number(std::istream& in, const std::string& name) {
    skip_separators(in);
    int value = -1;
    if (!(in >> value)) {
        throw std::runtime_error("bad PGM header: expected " + name);
    }
    return value;
}

// Read one binary PGM image; returns false at a clean end of input (nothing left but whitespace).
bool read_pgm(std::istream& in, std::vector<std::uint8_t>& pixels) {
    skip_separators(in);
    if (in.peek() == EOF) {
        return false;
    }
    char magic[2] = {0, 0};
    in.read(magic, 2);
    if (!in || magic[0] != 'P' || magic[1] != '5') {
        throw std::runtime_error("not a binary PGM image (it must start with P5)");
    }
    const int width = read_header_number(in, "a width");
    const int height = read_header_number(in, "a height");
    const int maxval = read_header_number(in, "a maximum grey level");
    if (width != kSide || height != kSide) {
        throw std::runtime_error("the image is " + std::to_string(width) + " x " + std::to_string(height) +
                                 ", expected 28 x 28");
    }
    if (maxval != 255) {
        throw std::runtime_error("maximum grey level " + std::to_string(maxval) + ", expected 255");
    }
    if (!std::isspace(in.get())) {  // exactly one whitespace byte before the pixels
        throw std::runtime_error("bad PGM header: no whitespace before the pixels");
    }
    pixels.resize(kPixels);
    in.read(reinterpret_cast<char*>(pixels.data()), kPixels);
    if (in.gcount() != kPixels) {
        throw std::runtime_error("truncated image: " + std::to_string(in.gcount()) + " of 784 pixels");
    }
    return true;
}

void add_image(const std::vector<std::uint8_t>& pixels, std::vector<float>& batch) {
    for (std::uint8_t value : pixels) {
        batch.push_back(static_cast<float>(value) / 255.0f);
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2 || std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help") {
        std::cerr << "usage: " << argv[0] << " MODEL.pt [IMAGE.pgm ...]   (no images or '-': PGM images on stdin)\n";
        return 2;
    }
    const std::string model_path = argv[1];

    std::vector<float> batch;
    std::vector<std::uint8_t> pixels;
    const bool from_stdin = argc == 2 || (argc == 3 && std::string(argv[2]) == "-");
    if (from_stdin) {
        std::ios::sync_with_stdio(false);
        int index = 0;
        try {
            while (read_pgm(std::cin, pixels)) {
                add_image(pixels, batch);
                ++index;
            }
        } catch (const std::exception& error) {
            std::cerr << "classify: stdin, image " << index + 1 << ": " << error.what() << "\n";
            return 1;
        }
    } else {
        for (int i = 2; i < argc; ++i) {
            std::ifstream file(argv[i], std::ios::binary);
            if (!file) {
                std::cerr << "classify: " << argv[i] << ": cannot open the file\n";
                return 1;
            }
            try {
                if (!read_pgm(file, pixels)) {
                    throw std::runtime_error("empty file");
                }
            } catch (const std::exception& error) {
                std::cerr << "classify: " << argv[i] << ": " << error.what() << "\n";
                return 1;
            }
            add_image(pixels, batch);
        }
    }
    const auto count = static_cast<std::int64_t>(batch.size() / kPixels);
    if (count == 0) {
        std::cerr << "classify: no images given\n";
        return 2;
    }

    torch::jit::script::Module model;
    try {
        model = torch::jit::load(model_path, torch::kCPU);
    } catch (const std::exception& error) {
        std::string message = error.what();
        std::cerr << "classify: cannot load " << model_path << ": " << message.substr(0, message.find('\n')) << "\n";
        return 1;
    }
    model.eval();

    torch::InferenceMode inference;
    torch::Tensor images = torch::from_blob(batch.data(), {count, 1, kSide, kSide}, torch::kFloat32);
    torch::Tensor logits = model.forward({images}).toTensor();
    torch::Tensor digits = logits.argmax(1);
    for (std::int64_t i = 0; i < count; ++i) {
        std::cout << digits[i].item<std::int64_t>() << "\n";
    }
    return 0;
}
